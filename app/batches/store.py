"""The batch store: file and batch records, each batch's chunk plan and outcomes, and the durable
queue of chunks, in the key store's medium: SQLite beside KEYS_DB without Redis
(app/batches/sqlite_store.py), Redis with REDIS_URL (app/batches/redis_store.py).

The contract both keep, which exactly-once rests on:
- a chunk is claimed by one worker at a time, under a lease; a claim whose lease ran out (its
  worker died or hung) can be claimed again by any worker of any replica;
- `complete` records a chunk's outcome once: the first completion wins and adds the chunk's
  counters to its batch's in the same atomic step; a later one changes nothing and is told so;
- a batch record is replaced whole only if nobody replaced it since it was read (`version`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.batches.errors import BatchStoreUnavailable
from app.batches.records import (
    BatchRecord,
    ChunkOutcome,
    ChunkPlan,
    Claim,
    Counters,
    FilePurpose,
    FileRecord,
)


class StoreUnavailable(BatchStoreUnavailable):
    """The store did not answer (Redis down or slow, the SQLite file locked or unwritable);
    `detail` says how, for the log (a client sees the generic message)."""

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail


@dataclass(slots=True)
class StoredBatch:
    record: BatchRecord
    counters: Counters = field(default_factory=Counters)
    enqueued: bool = False  # every planned chunk is in the queue (see `enqueue_chunks`)


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int  # chunks not done yet (waiting or in a worker's hands)
    oldest_age: float  # seconds since the oldest of them was queued; 0 when there is none


class BatchStore(Protocol):
    backend: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    # -- files ------------------------------------------------------------------------------

    async def put_file(self, record: FileRecord) -> None:
        """Create the record, or replace the one with its id."""
        ...

    async def get_file(self, file_id: str) -> FileRecord | None: ...

    async def delete_file(self, record: FileRecord) -> bool: ...

    async def list_files(
        self, owner: str, purpose: FilePurpose | None, after: str | None, limit: int, asc: bool
    ) -> tuple[list[FileRecord], bool]:
        """A page of the owner's files by `created_at` (then id), after the file `after`; and
        whether more follow."""
        ...

    async def expired_files(self, now: int, limit: int) -> list[FileRecord]: ...

    # -- batches ----------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None: ...

    async def get_batch(self, batch_id: str) -> StoredBatch | None: ...

    async def replace_batch(self, record: BatchRecord) -> bool:
        """Store `record` if the stored one still has `record.version` (then bump it)."""
        ...

    async def list_batches(
        self, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[StoredBatch], bool]:
        """Newest first; every owner's when `owner` is None (the admin API)."""
        ...

    async def active_batches(self) -> list[str]:
        """The ids of batches that are not final yet."""
        ...

    async def forget_active(self, batch_id: str) -> None:
        """Drop a final batch from the active ones (`active_batches`)."""
        ...

    async def take_lease(self, batch_id: str, worker: str, seconds: float) -> bool:
        """The batch's own lease (validating it, finalizing it): taken, or renewed by its
        holder; refused while another worker's has not run out."""
        ...

    async def drop_lease(self, batch_id: str, worker: str) -> None:
        """Give the batch's lease up (if `worker` holds it), for another worker to take now."""
        ...

    # -- chunks -----------------------------------------------------------------------------

    async def plan_chunks(self, record: BatchRecord, plans: list[ChunkPlan]) -> bool:
        """Replace the record (as `replace_batch`) and store its chunks' plans, atomically;
        then queue the chunks (`enqueue_chunks`). False: the record changed meanwhile."""
        ...

    async def enqueue_chunks(self, batch_id: str) -> None:
        """Queue every planned chunk that is not done (again: a duplicate is harmless), and mark
        the batch `enqueued`."""
        ...

    async def get_plan(self, batch_id: str, index: int) -> ChunkPlan | None: ...

    async def plans(self, batch_id: str) -> list[ChunkPlan]: ...

    async def claim(self, worker: str, lease: float) -> Claim | None: ...

    async def renew(self, claim: Claim, worker: str, lease: float) -> None: ...

    async def release(self, claim: Claim, worker: str) -> None:
        """Hand the chunk back for any worker to claim now."""
        ...

    async def complete(self, claim: Claim, outcome: ChunkOutcome) -> tuple[bool, bool]:
        """Record the outcome and take the chunk off the queue: (this completion won, every
        chunk of the batch is done now)."""
        ...

    async def outcomes(self, batch_id: str) -> list[ChunkOutcome]:
        """Every done chunk's outcome, in chunk order."""
        ...

    async def queue_stats(self, now: float) -> QueueStats: ...
