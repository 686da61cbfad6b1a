"""Each gateway process's batch workers: up to BATCH_CONCURRENCY chunks at once, claimed from the
durable queue, and a watch over the batches that are not finished (validating them, queueing
their chunks, finalizing them, the metrics, expired files).

Any worker of any replica can claim any chunk: a batch is split across all of them. A worker
renews its claim while it works (app/batches/chunk.py); a claim not renewed for
BATCH_LEASE_SECONDS (its process was killed, or hangs) is claimed by another. On shutdown a
worker claims nothing more, gives its chunks BATCH_DRAIN_SECONDS to finish, and hands back the
ones that did not, for another worker to run now rather than after a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

from app import metrics
from app.batches.chunk import ChunkRun, count_lines
from app.batches.finalize import finalize
from app.batches.records import ACTIVE, Claim
from app.batches.traces import WorkSpan
from app.batches.validating import validate
from app.batches.work import Work
from app.errors import DomainError

log = logging.getLogger("app.batches")

SWEEP_EVERY_SECONDS = 60.0
_ERROR_PAUSE = 1.0


class BatchRunner:
    def __init__(self, work: Work) -> None:
        self._work = work
        self._store = work.batches.store
        self._clock: Callable[[], float] = work.batches.clock
        settings = work.settings
        self._concurrency = settings.BATCH_CONCURRENCY
        self._poll = settings.BATCH_POLL_SECONDS
        self._lease = settings.BATCH_LEASE_SECONDS
        self._drain = settings.BATCH_DRAIN_SECONDS
        self._chunks: set[asyncio.Task[None]] = set()
        self._validations: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # a slot or a chunk may be there: claim now
        self._watch_now = asyncio.Event()  # a batch was created here: look at it now
        self._draining = False
        self._last_sweep = 0.0
        self._last_warning = 0.0

    def start(self) -> None:
        if self._concurrency == 0:
            log.info("batch workers off in this process (BATCH_CONCURRENCY=0)")
            return
        self._work.batches.on_created = self._watch_now.set
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="batch-claims"),
            asyncio.create_task(self._watch_loop(), name="batch-watch"),
        ]
        log.info(
            "batch workers: %d chunks at a time; batches in %s",
            self._concurrency,
            self._work.batches.backend,
        )

    async def stop(self) -> None:
        """Drain: claim nothing more; chunks in progress finish within BATCH_DRAIN_SECONDS or
        are handed back."""
        self._draining = True
        self._wake.set()
        for task in self._loops:
            task.cancel()
        for validation in self._validations.values():
            validation.cancel()
        if self._chunks:
            _, late = await asyncio.wait(self._chunks, timeout=self._drain)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        await asyncio.gather(*self._loops, *self._validations.values(), return_exceptions=True)

    # -- chunks -----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        work = self._work
        while not self._draining:
            if len(self._chunks) >= self._concurrency:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                claim = await self._store.claim(work.worker, self._lease)
            except DomainError as exc:
                self._warn("batch queue unavailable", exc)
                await asyncio.sleep(_ERROR_PAUSE)
                continue
            if claim is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                continue
            task = asyncio.create_task(self._run(claim), name=f"batch-chunk-{claim.index}")
            self._chunks.add(task)
            task.add_done_callback(self._chunk_done)

    def _chunk_done(self, task: asyncio.Task[None]) -> None:
        self._chunks.discard(task)
        self._wake.set()

    async def _run(self, claim: Claim) -> None:
        work, store = self._work, self._store
        span: WorkSpan | None = None
        try:
            stored = await store.get_batch(claim.batch_id)
            plan = await store.get_plan(claim.batch_id, claim.index)
            if stored is None or plan is None:
                log.warning("batch chunk with no plan: %s #%d", claim.batch_id, claim.index)
                return
            # A trace per chunk, linked to the batch's span; its lines' embedding work under it.
            span = WorkSpan(
                "batch chunk",
                stored.record.trace,
                {
                    "gateway.batch.id": claim.batch_id,
                    "gateway.batch.chunk": claim.index,
                    "gateway.batch.lines": plan.lines,
                    "gateway.batch.inputs": plan.inputs,
                },
            )
            run = ChunkRun(work, claim, stored.record, plan, self._clock)
            outcome, stopped = await run.run()
            won, all_done = await store.complete(claim, outcome)
        except asyncio.CancelledError:
            if span is not None:
                span.end("cancelled")
            await _quietly(store.release(claim, work.worker))  # drained: another runs it now
            raise
        except Exception as exc:
            if span is not None:
                span.end(type(exc).__name__)
            # An outage of a store (or a bug): the chunk goes back, to be run again.
            self._warn(f"batch chunk {claim.batch_id} #{claim.index} handed back", exc)
            await _quietly(store.release(claim, work.worker))
            await asyncio.sleep(_ERROR_PAUSE)
            return
        counters = outcome.counters
        span.end(
            attributes={
                "gateway.batch.completed": counters.completed,
                "gateway.batch.failed": counters.failed,
                "gateway.batch.stopped": stopped,
                "gateway.batch.first_completion": won,
            }
        )
        if not won:  # another worker completed it first: its parts are the ones named
            await _quietly(
                work.batches.objects.delete(*filter(None, [outcome.out_key, outcome.err_key]))
            )
            return
        count_lines(outcome.counters)
        await self._progress(claim)
        if all_done:
            await _quietly(finalize(work, claim.batch_id, self._clock))

    async def _progress(self, claim: Claim) -> None:
        """The batch's progress in the JSON log, after each chunk."""
        stored = await self._store.get_batch(claim.batch_id)
        if stored is None:
            return
        record, counters = stored.record, stored.counters
        done = counters.completed + counters.failed + counters.cancelled
        log.info(
            "batch progress",
            extra={
                "batch_id": record.id,
                "key_id": record.owner,
                "chunk": claim.index,
                "chunks_done": counters.chunks_done,
                "chunks": record.chunks,
                "lines_done": done,
                "lines": record.total,
                "completed": counters.completed,
                "failed": counters.failed,
                "input_tokens": counters.input_tokens,
                "cached_tokens": counters.cached_tokens,
            },
        )

    # -- the watch over unfinished batches --------------------------------------------------

    async def _watch_loop(self) -> None:
        interval = max(self._poll * 4, 0.2)
        while True:
            try:
                await self._watch()
            except DomainError as exc:
                self._warn("batch watch: store unavailable", exc)
            except Exception as exc:
                log.exception("batch watch failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_now.wait(), interval)
            self._watch_now.clear()

    async def _watch(self) -> None:
        work, store = self._work, self._store
        now = self._clock()
        by_status = dict.fromkeys(sorted(ACTIVE), 0)
        for batch_id in await store.active_batches():
            stored = await store.get_batch(batch_id)
            if stored is None:
                await store.forget_active(batch_id)
                continue
            record = stored.record
            if record.status in by_status:
                by_status[record.status] += 1
            if record.status == "validating" and now < record.expires_at:
                running = self._validations.get(batch_id)
                if running is None and await store.take_lease(batch_id, work.worker, self._lease):
                    task = asyncio.create_task(validate(work, batch_id, self._clock))
                    self._validations[batch_id] = task
                    task.add_done_callback(partial(self._validated, batch_id))
                continue
            if (
                record.chunks
                and not stored.enqueued
                and await store.take_lease(batch_id, work.worker, self._lease)
            ):
                await store.enqueue_chunks(batch_id)
                await store.drop_lease(batch_id, work.worker)
            ready = record.chunks == 0 or stored.counters.chunks_done >= record.chunks
            if ready and batch_id not in self._validations:
                await finalize(work, batch_id, self._clock)
        for status, count in by_status.items():
            metrics.BATCHES.labels(status).set(count)
        stats = await store.queue_stats(time.time())
        metrics.BATCH_QUEUE_DEPTH.set(stats.depth)
        metrics.BATCH_OLDEST_PENDING_SECONDS.set(stats.oldest_age)
        if time.monotonic() - self._last_sweep >= SWEEP_EVERY_SECONDS:
            self._last_sweep = time.monotonic()
            await work.batches.files.sweep_expired()

    def _validated(self, batch_id: str, task: asyncio.Task[None]) -> None:
        self._validations.pop(batch_id, None)
        self._wake.set()  # its chunks are queued
        if not task.cancelled() and task.exception() is not None:
            self._warn(f"batch {batch_id}: validation stopped", task.exception() or Exception())

    def _warn(self, what: str, exc: BaseException) -> None:
        if time.monotonic() - self._last_warning >= 10:  # once in a while, not once a poll
            self._last_warning = time.monotonic()
            detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
            log.warning("%s (%s)", what, detail)


async def _quietly(call: object) -> None:
    """Best effort (a release, a clean-up): a failure is logged, never raised."""
    try:
        async with asyncio.timeout(5):
            await call  # type: ignore[misc]
    except Exception as exc:
        log.warning("batch clean-up step failed (%s)", type(exc).__name__)
