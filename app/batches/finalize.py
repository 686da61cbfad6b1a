"""A batch's end: once every chunk is done (or when it stops before any was planned), its output
and error files are written as manifests of its chunks' parts, and it takes its final status.

Idempotent, under the batch's own lease: the files' ids derive from the batch's, so a finalize
cut short (a crash, a lost lease) and done again writes the same records, and the status moves
only from where it was read (the record's version). Final statuses: `cancelled` after a cancel,
`expired` when any line was stopped by the window's end, else `completed` (through
`finalizing`) — even when every line failed, as OpenAI's (the lines are in the error file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app import metrics
from app.batches.records import (
    FINAL,
    BatchRecord,
    ChunkOutcome,
    Counters,
    FileRecord,
    Part,
    derived_file_id,
)
from app.batches.work import Work

log = logging.getLogger("app.batches")


async def finalize(work: Work, batch_id: str, clock: Callable[[], float]) -> bool:
    """Finish the batch if it is ready to be; whether this call finished it."""
    store = work.batches.store
    if not await store.take_lease(batch_id, work.worker, work.settings.BATCH_LEASE_SECONDS):
        return False  # another worker is on it
    try:
        return await _finalize(work, batch_id, clock)
    finally:
        await store.drop_lease(batch_id, work.worker)


async def _finalize(work: Work, batch_id: str, clock: Callable[[], float]) -> bool:
    store = work.batches.store
    stored = await store.get_batch(batch_id)
    if stored is None:
        return False
    record = stored.record
    if record.status in FINAL:
        await store.forget_active(batch_id)
        return False
    now = int(clock())
    outcomes: list[ChunkOutcome] = []
    if record.chunks:
        outcomes = await store.outcomes(batch_id)
        if len(outcomes) < record.chunks:
            return False
    elif not (record.status == "cancelling" or now >= record.expires_at):
        return False  # not planned yet: validation is still to come
    counters = Counters()
    for outcome in outcomes:
        counters.add(outcome.counters)
    if record.status == "in_progress" and not counters.expired:
        record.status, record.finalizing_at = "finalizing", now
        if not await store.replace_batch(record):
            return False
    await _write_files(work, record, outcomes, now)
    final = _final_status(record, counters)
    record.status = final  # type: ignore[assignment]
    setattr(record, f"{final}_at", now)
    if not await store.replace_batch(record):
        return False
    await store.forget_active(batch_id)
    if not await work.batches.input_in_use(record.input_file_id):
        await _drop_orphaned_input(work, record)
    metrics.BATCHES_FINISHED.labels(final).inc()
    log.info(
        "batch finished",
        extra={
            "batch_id": batch_id,
            "key_id": record.owner,
            "status": final,
            "lines": record.total,
            "completed": counters.completed,
            "failed": counters.failed,
            "cancelled": counters.cancelled,
            "input_tokens": counters.input_tokens,
            "cached_tokens": counters.cached_tokens,
            "spend_usd": round(counters.spend_usd, 10),
            "seconds": now - record.created_at,
        },
    )
    return True


def _final_status(record: BatchRecord, counters: Counters) -> str:
    if record.status == "cancelling":
        return "cancelled"
    if counters.expired or (record.chunks == 0 and record.status == "validating"):
        return "expired"
    return "completed"


async def _write_files(
    work: Work, record: BatchRecord, outcomes: list[ChunkOutcome], now: int
) -> None:
    settings = work.settings
    expires = now + (record.output_expires_after or settings.BATCH_FILE_RETENTION_SECONDS)
    for kind, parts in (
        ("output", [Part(o.out_key, 0, o.out_bytes) for o in outcomes if o.out_key]),
        ("error", [Part(o.err_key, 0, o.err_bytes) for o in outcomes if o.err_key]),
    ):
        if not parts:
            continue
        file = FileRecord(
            id=derived_file_id(record.id, kind),
            owner=record.owner,
            purpose="batch_output",
            filename=f"{record.id}_{kind}.jsonl",
            bytes=sum(p.length for p in parts),
            created_at=now,
            expires_at=expires,
            parts=parts,
            batch_id=record.id,
        )
        await work.batches.store.put_file(file)
        if kind == "output":
            record.output_file_id = file.id
        else:
            record.error_file_id = file.id


async def _drop_orphaned_input(work: Work, record: BatchRecord) -> None:
    """An input file deleted (or expired) while its batch ran keeps its object until then."""
    if await work.batches.store.get_file(record.input_file_id) is None:
        await work.batches.objects.delete(f"files/{record.input_file_id}")
