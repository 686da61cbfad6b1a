"""The Batch API as the HTTP layer, the admin API and the console call it: create, retrieve, list
and cancel batches, and their files (`files`). The work itself runs in app/batches/runner.py.

Every batch belongs to the key that created it (`owner`: its key id, `anonymous` with auth off):
another key is told it does not exist and never sees it listed. `owner=None` is the admin's
view of every batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app import metrics
from app.batches.errors import BatchNotCancellable, BatchNotFound
from app.batches.files import Files
from app.batches.params import CreateBatch
from app.batches.records import (
    BatchError,
    BatchRecord,
    batch_public,
    new_batch_id,
)
from app.batches.store import BatchStore, StoredBatch
from app.batches.traces import batch_span
from app.config.settings import Settings
from app.state.object_store import ObjectStore

log = logging.getLogger("app.batches")

ANONYMOUS = "anonymous"
MAX_LIST = 100
_CANCELLABLE = ("validating", "in_progress")
_ALREADY_CANCELLING = ("cancelling", "cancelled")


def owner_of(key_id: str | None) -> str:
    return key_id or ANONYMOUS


class Batches:
    def __init__(
        self,
        store: BatchStore,
        objects: ObjectStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.objects = objects
        self.settings = settings
        self.clock = clock  # wall time, injectable: expiry is tested without sleeping
        self.files = Files(store, objects, settings, clock, in_use=self.input_in_use)
        # This process's workers, told of a new batch at once (other processes' find it on
        # their next look at the store).
        self.on_created: Callable[[], None] | None = None

    @property
    def backend(self) -> str:
        return f"{self.store.backend}; files in {self.objects.description}"

    def public(self, stored: StoredBatch) -> dict[str, Any]:
        return batch_public(stored.record, stored.counters)

    async def create(self, owner: str, params: CreateBatch) -> StoredBatch:
        """A new batch, `validating` (the runner validates its file), or already `failed` when
        its input file is not one of the owner's batch files (as OpenAI: not a 400)."""
        now = int(self.clock())
        record = BatchRecord(
            id=new_batch_id(),
            owner=owner,
            input_file_id=params.input_file_id,
            completion_window=params.completion_window,
            created_at=now,
            expires_at=now + params.window_seconds,
            metadata=params.metadata,
            output_expires_after=params.output_expires_after,
        )
        record.trace = batch_span(record.id)
        problem = await self._input_problem(owner, params.input_file_id, now)
        if problem is not None:
            record.status, record.failed_at, record.errors = "failed", now, [problem]
        await self.store.create_batch(record)
        if problem is not None:
            await self.store.forget_active(record.id)
            metrics.BATCHES_FINISHED.labels("failed").inc()
        elif self.on_created is not None:
            self.on_created()
        log.info(
            "batch created",
            extra={
                "batch_id": record.id,
                "key_id": owner,
                "input_file_id": record.input_file_id,
                "status": record.status,
                "completion_window": record.completion_window,
            },
        )
        return StoredBatch(record)

    async def _input_problem(self, owner: str, file_id: str, now: int) -> BatchError | None:
        found = await self.store.get_file(file_id)
        expired = found is not None and found.expires_at is not None and found.expires_at <= now
        if found is None or found.owner != owner or expired:
            shown = file_id[:80]
            return BatchError("invalid_request", f"Cannot find file {shown}.", "input_file_id")
        if found.purpose != "batch":
            return BatchError(
                "invalid_request",
                f"The file {file_id} has purpose '{found.purpose}': a batch's input file must "
                "have purpose 'batch'.",
                "input_file_id",
            )
        return None

    async def get(self, owner: str | None, batch_id: str) -> StoredBatch:
        stored = await self.store.get_batch(batch_id)
        if stored is None or (owner is not None and stored.record.owner != owner):
            raise BatchNotFound(batch_id)
        return stored

    async def list(
        self, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[StoredBatch], bool]:
        return await self.store.list_batches(owner, after, limit)

    async def cancel(self, owner: str | None, batch_id: str, actor: str) -> StoredBatch:
        """`cancelling` now; workers stop within seconds and the batch ends `cancelled`, with
        the lines already done in its output file. A batch already cancelling (or cancelled)
        is answered as it is; a finished one is a 409."""
        for _ in range(10):  # the record may change under us (a chunk's finalize, a cancel)
            stored = await self.get(owner, batch_id)
            record = stored.record
            if record.status in _ALREADY_CANCELLING:
                return stored
            if record.status not in _CANCELLABLE:
                raise BatchNotCancellable(record.status)
            record.status, record.cancelling_at = "cancelling", int(self.clock())
            if await self.store.replace_batch(record):
                log.info(
                    "batch cancelling",
                    extra={"batch_id": batch_id, "key_id": record.owner, "actor": actor},
                )
                return stored
        raise BatchNotCancellable(record.status)

    async def input_in_use(self, file_id: str) -> bool:
        """Whether a batch still running reads this file (its object outlives its record then:
        app/batches/finalize.py removes it at the batch's end)."""
        for batch_id in await self.store.active_batches():
            stored = await self.store.get_batch(batch_id)
            if stored is not None and stored.record.input_file_id == file_id:
                return True
        return False

    async def aclose(self) -> None:
        await self.store.aclose()
