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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from app import metrics
from app.batches.lines import (
    CANCELLED,
    EXPIRED,
    InputLine,
    chunk_lines,
    error_response_line,
    not_run_line,
    output_line,
    parse_line,
)
from app.batches.records import (
    BatchRecord,
    ChunkOutcome,
    ChunkPlan,
    Claim,
    Counters,
    line_request_id,
    request_line_id,
)
from app.batches.work import Work
from app.core.embedding_request import parse_embedding_body
from app.core.embedding_response import embeddings_body
from app.core.job import Lane
from app.errors import DomainError, ManagedKeyRefused
from app.keys.model import ApiKeyRecord

log = logging.getLogger("app.batches")

Stop = Literal["cancel", "expire"]


@dataclass(slots=True)
class _Done:
    ok: bool
    line: bytes
    prompt_tokens: int = 0
    cached_tokens: int = 0
    upstream_tokens: int = 0
    spend_usd: float = 0.0


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

    async def run(self) -> tuple[ChunkOutcome, int]:
        """Embed the chunk's lines and write its parts: its outcome (not completed yet) and the
        number of lines that were stopped."""
        batch, plan = self._batch, self._plan
        data = await self._work.batches.objects.read(
            f"files/{batch.input_file_id}", plan.start, plan.end
        )
        lines = [self._parse(number, raw) for number, raw in chunk_lines(data, plan.first_line)]
        wanted = [line for line in lines if isinstance(line, InputLine)]
        results: dict[int, _Done] = {}
        stop = await self._stop_reason(batch)
        if stop is None and wanted:
            stop = await self._embed_all(wanted, results)
        return await self._write(lines, results, stop)

    def _parse(self, number: int, raw: bytes) -> InputLine | _Done:
        found = parse_line(raw, number, self._batch.endpoint)
        if isinstance(found, InputLine):
            return found
        # Validated already: only a file changed under the batch gets here.
        body = _error_body(found.message, found.param, found.code)
        return _Done(
            False, error_response_line(request_line_id(self._batch.id, number), "", "", 400, body)
        )

    async def _embed_all(self, lines: list[InputLine], results: dict[int, _Done]) -> Stop | None:
        work = self._work
        try:
            key = await work.policy.record(self._batch.owner)
        except ManagedKeyRefused as refused:  # the creating key was revoked, disabled, expired
            for line in lines:
                results[line.number] = self._failed(line, refused)
            return None
        tasks = {asyncio.create_task(self._embed(line, key)): line.number for line in lines}
        pending = set(tasks)
        renew_at = time.monotonic() + self._lease / 3
        stop: Stop | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=self._poll)
                for task in done:
                    results[tasks[task]] = task.result()
                if not pending:
                    break
                if time.monotonic() >= renew_at:
                    await work.batches.store.renew(self._claim, work.worker, self._lease)
                    renew_at = time.monotonic() + self._lease / 3
                stop = await self._stop_reason(None)
                if stop is not None:
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return stop

    async def _embed(self, line: InputLine, key: ApiKeyRecord | None) -> _Done:
        work, batch = self._work, self._batch
        request_id = line_request_id(batch.id, line.number)
        line_id = request_line_id(batch.id, line.number)
        try:
            with work.gateway.serving.in_use() as serving:
                job = await parse_embedding_body(
                    line.body, serving.registry, request_id, work.policy.allows(key)
                )
                job.lane = Lane.BULK
                charge = await work.policy.admit(key, job)
                try:
                    result = await serving.embedder.embed(job, self._timeout, read_cache=True)
                except BaseException:
                    await work.policy.refund(charge)
                    raise
                await work.policy.settle(charge, job, result)
                work.policy.record_usage(batch.owner, job, result)
                body = embeddings_body(
                    job.model.id, result.vectors, job.want_base64, result.prompt_tokens
                )
        except Exception as exc:  # the line fails alone, answered as the endpoint would
            if not isinstance(exc, DomainError):
                log.exception(
                    "batch line failed", extra={"batch_id": batch.id, "line": line.number}
                )
            return self._failed(line, exc)
        price = job.model.config.pricing.per_million_tokens
        return _Done(
            True,
            output_line(line_id, line.custom_id, request_id, body),
            result.prompt_tokens,
            result.cached_tokens,
            result.upstream_tokens,
            result.upstream_tokens * price / 1_000_000,
        )

    def _failed(self, line: InputLine, error: BaseException) -> _Done:
        status, body = self._work.render(error)
        request_id = line_request_id(self._batch.id, line.number)
        line_id = request_line_id(self._batch.id, line.number)
        return _Done(False, error_response_line(line_id, line.custom_id, request_id, status, body))

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
                line_id = request_line_id(self._batch.id, line.number)
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
