"""One chunk of a batch, run by the worker that claimed it: its lines embedded through the same
engine as synchronous requests, its results written as parts, then the chunk completed.

Every line goes through `Embedder.embed` in the bulk lane (`Lane.BULK`): the per-input cache,
de-duplication against identical inputs in flight, micro-batching into full upstream calls,
pacing and failover, all behind interactive traffic. Lines run concurrently, so routing merges
them (and other chunks' lines) into calls as large as each route allows. Each output line's
`response.body` is built by the synchronous endpoint's own builder.

Exactly once: the chunk's output lines and error lines are written as two objects whose keys
carry this attempt's id, each atomically, and only then is the chunk completed; the store keeps
the first completion only. A worker that dies before completing leaves objects nobody names
(its lease runs out and another worker runs the chunk again); one that completes second deletes
its own. So each line is in exactly one named part, once.

Cancel and expiry: while its lines run the worker looks at the batch every BATCH_POLL_SECONDS;
once it is cancelling, or its window has ended, lines not finished are stopped (no new upstream
call starts for them) and written as `batch_cancelled` or `batch_expired` error lines.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Literal

import orjson

from app import metrics
from app.batches.embedding import LineEmbedder, LineResult
from app.batches.lines import (
    CANCELLED,
    EXPIRED,
    InputLine,
    chunk_lines,
    error_response_line,
    not_run_line,
    parse_line,
)
from app.batches.records import (
    BatchRecord,
    ChunkOutcome,
    ChunkPlan,
    Claim,
    Counters,
    line_ids,
)
from app.batches.turns import Turns
from app.batches.work import Work
from app.errors import ManagedKeyRefused

log = logging.getLogger("app.batches")

Stop = Literal["cancel", "expire"]
PARTS_IN_FLIGHT = 4  # groups (or lines) of one chunk being embedded at once


_Done = LineResult


class ChunkRun:
    """Run one claimed chunk to its outcome (or to None when the worker is told to let go)."""

    def __init__(
        self,
        work: Work,
        claim: Claim,
        record: BatchRecord,
        plan: ChunkPlan,
        clock: Callable[[], float],
    ) -> None:
        self._work = work
        self._claim = claim
        self._batch = record
        self._plan = plan
        self._clock = clock
        settings = work.settings
        self._poll = settings.BATCH_POLL_SECONDS
        self._lease = settings.BATCH_LEASE_SECONDS
        self._timeout = settings.REQUEST_TIMEOUT_SECONDS
        self._attempt = secrets.token_hex(6)
        self._next_look = 0.0  # when to look at the batch (a cancel?) again

    async def run(self) -> tuple[ChunkOutcome, int]:
        """Embed the chunk's lines and write its parts: its outcome (not completed yet) and the
        number of lines that were stopped."""
        batch, plan = self._batch, self._plan
        data = await self._work.batches.objects.read(
            f"files/{batch.input_file_id}", plan.start, plan.end
        )
        lines: list[InputLine | _Done] = []
        turns = Turns()  # interactive requests first
        for number, raw in chunk_lines(data, plan.first_line):
            lines.append(self._parse(number, raw))
            if turns.due():
                await turns.give()
        wanted = [line for line in lines if isinstance(line, InputLine)]
        results: dict[int, _Done] = {}
        stop = await self._stop_reason(batch)
        if stop is None and wanted:
            stop = await self._embed_all(wanted, results, turns)
        return await self._write(lines, results, stop)

    def _parse(self, number: int, raw: bytes) -> InputLine | _Done:
        found = parse_line(raw, number, self._batch.endpoint)
        if isinstance(found, InputLine):
            return found
        # Validated already: only a file changed under the batch gets here.
        body = _error_body(found.message, found.param, found.code)
        return _Done(
            False, error_response_line(line_ids(self._batch.id, number)[0], "", "", 400, body)
        )

    async def _embed_all(
        self, lines: list[InputLine], results: dict[int, _Done], turns: Turns
    ) -> Stop | None:
        """Embed the lines (app/batches/embedding.py) until done, or until the batch is
        cancelled or expires: then what has not finished is stopped."""
        work = self._work
        try:
            key = await work.policy.record(self._batch.owner)
        except ManagedKeyRefused as refused:  # the creating key was revoked, disabled, expired
            embedder = LineEmbedder(work, self._batch, None)
            for line in lines:
                results[line.number] = embedder.failed(line, refused)
            return None
        embedder = LineEmbedder(work, self._batch, key)
        parts: list[Callable[[], Coroutine[Any, Any, dict[int, LineResult]]]]
        if embedder.grouped:
            groups, failed = await embedder.groups(lines, turns)
            results.update(failed)
            parts = [partial(embedder.group, group) for group in groups]
        else:
            parts = [partial(embedder.one, line) for line in lines]
        waiting = iter(parts)
        pending: set[asyncio.Task[dict[int, LineResult]]] = set()
        renew_at = time.monotonic() + self._lease / 3
        stop: Stop | None = None
        try:
            while True:
                # A few parts at a time: every part in flight takes its turns of the event loop,
                # and interactive requests wait for all of those turns.
                while len(pending) < PARTS_IN_FLIGHT and (part := next(waiting, None)):
                    pending.add(asyncio.create_task(part()))
                if not pending:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    results.update(task.result())
                if time.monotonic() >= renew_at:
                    await work.batches.store.renew(self._claim, work.worker, self._lease)
                    renew_at = time.monotonic() + self._lease / 3
                if not done or time.monotonic() >= self._next_look:
                    stop = await self._stop_reason(None)
                    self._next_look = time.monotonic() + self._poll
                    if stop is not None:
                        break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return stop

    async def _stop_reason(self, known: BatchRecord | None) -> Stop | None:
        record = known
        if record is None:
            stored = await self._work.batches.store.get_batch(self._batch.id)
            record = stored.record if stored is not None else self._batch
        if record.status in ("cancelling", "cancelled"):
            return "cancel"
        if self._clock() >= record.expires_at:
            return "expire"
        return None

    async def _write(
        self, lines: list[InputLine | _Done], results: dict[int, _Done], stop: Stop | None
    ) -> tuple[ChunkOutcome, int]:
        out: list[bytes] = []
        err: list[bytes] = []
        counters = Counters(chunks_done=1)
        stopped = 0
        for line in lines:
            done = line if isinstance(line, _Done) else results.get(line.number)
            if done is None:  # never finished: the batch was cancelled or expired
                assert isinstance(line, InputLine)
                stopped += 1
                reason = CANCELLED if stop == "cancel" else EXPIRED
                line_id = line_ids(self._batch.id, line.number)[0]
                err.append(not_run_line(line_id, line.custom_id, reason))
                if stop == "cancel":
                    counters.cancelled += 1
                else:
                    counters.expired += 1
                    counters.failed += 1  # OpenAI does not say; ours: expired lines failed
                continue
            (out if done.ok else err).append(done.line)
            if done.ok:
                counters.completed += 1
            else:
                counters.failed += 1
            counters.input_tokens += done.prompt_tokens
            counters.cached_tokens += done.cached_tokens
            counters.upstream_tokens += done.upstream_tokens
            counters.spend_usd += done.spend_usd
        base = f"batches/{self._batch.id}/{self._plan.index:06d}.{self._attempt}"
        objects = self._work.batches.objects
        out_key = err_key = None
        if out:
            out_key = base + ".out.jsonl"
            await objects.put(out_key, b"".join(out))
        if err:
            err_key = base + ".err.jsonl"
            await objects.put(err_key, b"".join(err))
        outcome = ChunkOutcome(
            self._plan.index,
            out_key,
            sum(map(len, out)),
            err_key,
            sum(map(len, err)),
            counters,
        )
        return outcome, stopped


def _error_body(message: str, param: str | None, code: str | None) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return orjson.dumps({"error": error})


def count_lines(counters: Counters) -> None:
    """The chunk's lines in the lines-by-outcome metric (by whoever completed it first)."""
    metrics.BATCH_LINES.labels("completed").inc(counters.completed)
    metrics.BATCH_LINES.labels("failed").inc(counters.failed - counters.expired)
    metrics.BATCH_LINES.labels("expired").inc(counters.expired)
    metrics.BATCH_LINES.labels("cancelled").inc(counters.cancelled)
