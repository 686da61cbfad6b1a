"""A batch's `validating` step, run by the worker holding the batch's lease: its input file checked
and cut into chunks (app/batches/validation.py), then the batch `in_progress` with its chunks
queued, or `failed` with what is wrong and where. A worker that dies mid-way loses its lease
and another validates the batch from the start: nothing of a half-done validation is kept."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app import metrics
from app.batches.records import BatchError
from app.batches.traces import WorkSpan
from app.batches.validation import Limits, ValidationStopped, validate_file
from app.batches.work import Work
from app.core.embedding_request import body_rules
from app.errors import ManagedKeyRefused

log = logging.getLogger("app.batches")


async def validate(work: Work, batch_id: str, clock: Callable[[], float]) -> None:
    """Validate the batch under the lease the caller took; the lease is given up at the end."""
    try:
        await _validate(work, batch_id, clock)
    finally:
        await work.batches.store.drop_lease(batch_id, work.worker)


async def _validate(work: Work, batch_id: str, clock: Callable[[], float]) -> None:
    store = work.batches.store
    stored = await store.get_batch(batch_id)
    if stored is None or stored.record.status != "validating":
        return
    record = stored.record
    settings = work.settings
    lease = settings.BATCH_LEASE_SECONDS
    file = await store.get_file(record.input_file_id)
    if file is None or file.object_key is None:
        await _fail(work, batch_id, [_missing_file(record.input_file_id)], clock)
        return
    try:
        key = await work.policy.record(record.owner)
    except ManagedKeyRefused as refused:
        await _fail(work, batch_id, [BatchError("invalid_api_key", refused.message)], clock)
        return

    async def keep_going() -> bool:
        if not await store.take_lease(batch_id, work.worker, lease):
            return False
        current = await store.get_batch(batch_id)
        return current is not None and current.record.status == "validating"

    limits = Limits(
        max_lines=settings.BATCH_MAX_LINES,
        max_line_bytes=settings.MAX_REQUEST_BODY_BYTES,
        chunk_lines=settings.BATCH_CHUNK_LINES,
        chunk_inputs=settings.BATCH_CHUNK_INPUTS,
        chunk_bytes=settings.BATCH_CHUNK_BYTES,
    )
    span = WorkSpan("batch validation", record.trace, {"gateway.batch.id": batch_id})
    with work.gateway.serving.in_use() as serving:
        try:
            result = await validate_file(
                work.batches.objects.stream(file.object_key),
                registry=serving.registry,
                allows=work.policy.allows(key),
                limits=limits,
                endpoint=record.endpoint,
                keep_going=keep_going,
            )
        except ValidationStopped:
            span.end("stopped")
            return  # cancelled meanwhile (the watch finalizes it), or the lease went elsewhere
        except BaseException as exc:
            span.end(type(exc).__name__)
            raise
        model = serving.registry.get(result.model) if result.model is not None else None
        record.body_rules = body_rules(model) if model is not None else None
    span.end(
        attributes={
            "gateway.batch.lines": result.lines,
            "gateway.batch.inputs": result.inputs,
            "gateway.batch.chunks": len(result.plans),
            "gateway.batch.errors": len(result.errors),
        }
    )
    if result.errors:
        await _fail(work, batch_id, result.errors, clock)
        return
    record.status, record.in_progress_at = "in_progress", int(clock())
    record.total, record.total_inputs = result.lines, result.inputs
    record.model, record.chunks = result.model, len(result.plans)
    if not await store.plan_chunks(record, result.plans):
        return  # changed meanwhile (a cancel): the watch takes it from there
    log.info(
        "batch validated",
        extra={
            "batch_id": batch_id,
            "key_id": record.owner,
            "lines": result.lines,
            "inputs": result.inputs,
            "chunks": len(result.plans),
            "model": result.model,
        },
    )


def _missing_file(file_id: str) -> BatchError:
    return BatchError("invalid_request", f"Cannot find file {file_id[:80]}.", "input_file_id")


async def _fail(
    work: Work, batch_id: str, errors: list[BatchError], clock: Callable[[], float]
) -> None:
    store = work.batches.store
    stored = await store.get_batch(batch_id)
    if stored is None or stored.record.status != "validating":
        return
    record = stored.record
    record.status, record.failed_at, record.errors = "failed", int(clock()), errors
    if not await store.replace_batch(record):
        return
    await store.forget_active(batch_id)
    metrics.BATCHES_FINISHED.labels("failed").inc()
    log.info(
        "batch failed validation",
        extra={
            "batch_id": batch_id,
            "key_id": record.owner,
            "errors": len(errors),
            "first_error": errors[0].code if errors else None,
            "line": errors[0].line if errors else None,
        },
    )
