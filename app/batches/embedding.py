"""How a chunk's lines are embedded: through `Embedder.embed` in the bulk lane, as synchronous
requests are (the per-input cache, de-duplication, micro-batching, pacing, failover).

Two ways, one result:
- **Grouped** (the creating key has no limits and no budget): the chunk's lines that share a
  call shape (dimensions, input_type, user, text or token IDs) are one job of up to 2,048 inputs,
  embedded at once, and each line gets its own rows back with the usage of its own items
  (`embed(per_item=True)`: each item at its share of the upstream's count, as the endpoint
  counts items of merged requests). The engine's work per request is paid once per group
  instead of once per line. Should the group fail (an upstream rejects one input, say), its
  lines are embedded one by one, so each fails or succeeds on its own.
- **Line by line** (a key with limits or a budget): each line is admitted by the key's policy
  on its own (paced by its limits, refused once its budget is spent), as its request would be.

Either way each output line's body is built by the endpoint's own builder, and the work yields
to the event loop between lines, so interactive requests are not held up behind a chunk.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.batches.lines import InputLine, error_response_line, output_line
from app.batches.records import BatchRecord, line_ids
from app.batches.work import Work
from app.config.registry import MAX_INPUTS
from app.core.embedder import Embedded
from app.core.embedding_request import parse_embedding_body
from app.core.embedding_response import embeddings_body
from app.core.job import EmbeddingJob, Lane
from app.core.token_accounting import split_proportionally
from app.errors import DomainError
from app.keys.model import ApiKeyRecord

log = logging.getLogger("app.batches")

YIELD_EVERY = 32  # lines of synchronous work between two turns of the event loop
# A group's inputs: its embedding has steps over all of them at once (cache keys, gathering the
# vectors); at this size each is ~1 ms of the event loop. Routing merges groups back into calls
# as large as the route takes while its slots are busy. Never more than one call of its first
# route (its `max_batch_size`), so a group is not split into a burst of calls.
GROUP_INPUTS = 512
MAX_GROUP_BYTES = 300_000  # at most the endpoint's tokens per request (bytes bound tokens)


@dataclass(slots=True)
class LineResult:
    ok: bool
    line: bytes  # the output or error line, newline included
    prompt_tokens: int = 0
    cached_tokens: int = 0
    upstream_tokens: int = 0
    spend_usd: float = 0.0


@dataclass(slots=True)
class _Parsed:
    line: InputLine
    job: EmbeddingJob


@dataclass(slots=True)
class _Group:
    """Lines to embed as one job: at most `most` inputs and one request's tokens."""

    lines: list[_Parsed]
    most: int
    inputs: int = 0
    bytes: int = 0  # bounds the tokens: a token spans at least one byte

    def take(self, parsed: _Parsed) -> bool:
        size = _job_bytes(parsed.job)
        inputs = self.inputs + len(parsed.job)
        if self.lines and (inputs > self.most or self.bytes + size > MAX_GROUP_BYTES):
            return False
        self.lines.append(parsed)
        self.inputs, self.bytes = inputs, self.bytes + size
        return True


class LineEmbedder:
    def __init__(self, work: Work, batch: BatchRecord, key: ApiKeyRecord | None) -> None:
        self._work = work
        self._batch = batch
        self._key = key
        self._timeout = work.settings.REQUEST_TIMEOUT_SECONDS

    @property
    def grouped(self) -> bool:
        key = self._key
        return key is None or not (key.limited or key.budget_usd is not None)

    # -- line by line -----------------------------------------------------------------------

    async def one(self, line: InputLine) -> dict[int, LineResult]:
        work, batch = self._work, self._batch
        line_id, request_id = line_ids(batch.id, line.number)
        try:
            with work.gateway.serving.in_use() as serving:
                job = await parse_embedding_body(
                    line.body, serving.registry, request_id, work.policy.allows(self._key)
                )
                job.lane = Lane.BULK
                charge = await work.policy.admit(self._key, job)
                try:
                    result = await serving.embedder.embed(job, self._timeout, read_cache=True)
                except BaseException:
                    await work.policy.refund(charge)
                    raise
                await work.policy.settle(charge, job, result)
                work.policy.record_usage(batch.owner, job, result)
        except Exception as exc:  # the line fails alone, answered as the endpoint would
            return {line.number: self.failed(line, exc)}
        body = embeddings_body(job.model.id, result.vectors, job.want_base64, result.prompt_tokens)
        price = job.model.config.pricing.per_million_tokens
        done = LineResult(
            True,
            output_line(line_id, line.custom_id, request_id, body),
            result.prompt_tokens,
            result.cached_tokens,
            result.upstream_tokens,
            result.upstream_tokens * price / 1_000_000,
        )
        return {line.number: done}

    def failed(self, line: InputLine, error: BaseException) -> LineResult:
        if not isinstance(error, DomainError):
            log.exception(
                "batch line failed", extra={"batch_id": self._batch.id, "line": line.number}
            )
        status, body = self._work.render(error)
        line_id, request_id = line_ids(self._batch.id, line.number)
        return LineResult(
            False, error_response_line(line_id, line.custom_id, request_id, status, body)
        )

    # -- grouped ----------------------------------------------------------------------------

    async def groups(
        self, lines: list[InputLine]
    ) -> tuple[list[list[_Parsed]], dict[int, LineResult]]:
        """The lines parsed (those that fail, as results) and grouped by call shape."""
        work = self._work
        failed: dict[int, LineResult] = {}
        by_shape: dict[tuple[object, ...], list[_Group]] = {}
        allows = work.policy.allows(self._key)
        registry = work.gateway.serving.registry
        for count, line in enumerate(lines, 1):
            try:
                job = await parse_embedding_body(line.body, registry, self._batch.id, allows)
            except DomainError as exc:
                failed[line.number] = self.failed(line, exc)
                continue
            shape = (job.model.id, job.dimensions, job.input_type, job.user, job.texts is None)
            most = _group_inputs(job)
            groups = by_shape.setdefault(shape, [_Group([], most)])
            parsed = _Parsed(line, job)
            if not groups[-1].take(parsed):
                groups.append(_Group([parsed], most, len(job), _job_bytes(job)))
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return [g.lines for groups in by_shape.values() for g in groups], failed

    async def group(self, parsed: list[_Parsed]) -> dict[int, LineResult]:
        """The group's lines from one job; line by line should the job fail."""
        work = self._work
        first = parsed[0].job
        job = EmbeddingJob(
            model=first.model,
            texts=[t for p in parsed for t in p.job.texts or ()]
            if first.texts is not None
            else None,
            token_ids=(
                [ids for p in parsed for ids in p.job.token_ids or ()]
                if first.token_ids is not None
                else None
            ),
            dimensions=first.dimensions,
            user=first.user,
            want_base64=False,
            request_id=first.request_id,
            input_type=first.input_type,
            lane=Lane.BULK,
        )
        # Its items' shares of the upstream's count weigh our own count of each (the usage rule
        # of merged requests): counted in steps now, not in one block of the event loop later.
        await job.count_tokens_in_steps(YIELD_EVERY)
        try:
            with work.gateway.serving.in_use() as serving:
                charge = await work.policy.admit(self._key, job)
                try:
                    result = await serving.embedder.embed(
                        job, self._timeout, read_cache=True, per_item=True
                    )
                except BaseException:
                    await work.policy.refund(charge)
                    raise
                await work.policy.settle(charge, job, result)
        except Exception:
            # One input the upstream refuses must not fail its neighbours: each on its own.
            results: dict[int, LineResult] = {}
            for one in await asyncio.gather(*(self.one(p.line) for p in parsed)):
                results.update(one)
            return results
        return await self._split(parsed, job, result)

    async def _split(
        self, parsed: list[_Parsed], job: EmbeddingJob, result: Embedded
    ) -> dict[int, LineResult]:
        batch, policy = self._batch, self._work.policy
        assert result.item_tokens is not None and result.item_cached is not None
        item_tokens, item_cached = result.item_tokens, result.item_cached
        spans, start = [], 0
        for p in parsed:
            spans.append((start, start + len(p.job)))
            start += len(p.job)
        # What went upstream, shared among the lines by what each sent (cache hits sent nothing).
        sent = [
            sum(t for t, hit in zip(item_tokens[a:b], item_cached[a:b], strict=True) if not hit)
            for a, b in spans
        ]
        upstream = split_proportionally(result.upstream_tokens, sent)
        price = job.model.config.pricing.per_million_tokens
        results: dict[int, LineResult] = {}
        for count, (p, (a, b), up) in enumerate(zip(parsed, spans, upstream, strict=True), 1):
            line, line_job = p.line, p.job
            prompt = sum(item_tokens[a:b])
            cached = sum(
                t for t, hit in zip(item_tokens[a:b], item_cached[a:b], strict=True) if hit
            )
            body = embeddings_body(
                line_job.model.id, result.vectors[a:b], line_job.want_base64, prompt
            )
            line_id, request_id = line_ids(batch.id, line.number)
            results[line.number] = LineResult(
                True,
                output_line(line_id, line.custom_id, request_id, body),
                prompt,
                cached,
                up,
                up * price / 1_000_000,
            )
            policy.record_line_usage(batch.owner, line_job, prompt, cached, up)
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return results


def _group_inputs(job: EmbeddingJob) -> int:
    routes = job.model.routes
    first = routes[0].policy.max_batch_size if routes else MAX_INPUTS
    return max(1, min(GROUP_INPUTS, first))


def _job_bytes(job: EmbeddingJob) -> int:
    if job.texts is not None:
        return sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in job.texts)
    return sum(len(ids) for ids in job.token_ids or ())
