"""How a chunk's lines are embedded: through `Embedder.embed` in the bulk lane, as synchronous
requests are (the per-input cache, de-duplication, micro-batching, pacing, failover).

Two ways, one result:
- **Grouped** (the creating key has no limits and no budget): the chunk's lines that share a
  call shape (dimensions, input_type, user, text or token IDs) are one job of up to
  GROUP_INPUTS inputs, embedded at once, and each line gets its own rows back with the usage of
  its own items (`embed(per_item=True)`: each item at its share of the upstream's count, as the
  endpoint counts items of merged requests). The engine's work per request is paid once per
  group instead of once per line, and so is the vectors' conversion for the wire; the group's
  lines go into the key's usage at once. Should the group fail (an upstream rejects one input,
  say), its lines are embedded one by one, so each fails or succeeds on its own.
- **Line by line** (a key with limits or a budget): each line is admitted by the key's policy
  on its own (paced by its limits, refused once its budget is spent), as its request would be.

A body was checked at validation: while its model's rules are those it was checked under
(`body_rules`, kept with the batch) it is only rebuilt into its job, else checked again.
Either way each output line's body is what the endpoint's own builder makes, and the work gives
the event loop a turn every millisecond (app/batches/turns.py), so interactive requests are not
held up behind a chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from operator import mul
from typing import Any

from app.batches.lines import InputLine, error_response_line, output_line, output_line_of
from app.batches.records import BatchRecord, line_ids
from app.batches.turns import Turns
from app.batches.work import Work
from app.config.registry import MAX_INPUTS, Model, Registry
from app.core.embedder import Embedded
from app.core.embedding_request import (
    body_rules,
    checked_embedding_body,
    parse_embedding_body,
    parse_small_embedding_body,
)
from app.core.embedding_response import embeddings_body, embeddings_payload, wire_rows
from app.core.job import EmbeddingJob, Lane
from app.core.token_accounting import split_proportionally
from app.errors import DomainError
from app.keys.model import ApiKeyRecord

log = logging.getLogger("app.batches")

# Texts counted (cl100k) between two looks at whether the event loop is due a turn: ~1 ms.
COUNT_STEP = 128
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

    def take(self, parsed: _Parsed, size: int) -> bool:
        """Add the line (`size`: its `_job_bytes`) if it fits."""
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
        self._rules_of: Registry | None = None  # the registry `_unchanged` was found for
        self._unchanged: Model | None = None

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
                allows = work.policy.allows(self._key)
                job = self._job_now(line, serving.registry, allows, request_id)
                if job is None:
                    job = await parse_embedding_body(
                        line.body, serving.registry, request_id, allows
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

    def _job_now(
        self,
        line: InputLine,
        registry: Registry,
        allows: Callable[[str], bool] | None,
        request_id: str,
    ) -> EmbeddingJob | None:
        """The line's job, without a turn of the event loop; None: await `parse_embedding_body`.
        Its body was checked at validation: while its model's rules are the same, it is only
        rebuilt (`checked_embedding_body`); else (a reload changed them, the key may no longer
        use the model) it is checked again as the endpoint would."""
        model = self._checked_model(registry, allows)
        if model is not None and line.body.get("model") == model.id:
            return checked_embedding_body(line.body, model, request_id)
        return parse_small_embedding_body(line.body, registry, request_id, allows)

    def _checked_model(
        self, registry: Registry, allows: Callable[[str], bool] | None
    ) -> Model | None:
        """The batch's model if its bodies' checks at validation still hold (once a registry)."""
        if self._rules_of is registry:
            return self._unchanged
        batch = self._batch
        model = registry.get(batch.model) if batch.model is not None else None
        same = (
            model is not None
            and batch.body_rules is not None
            and model.available
            and (allows is None or allows(model.id))
            and body_rules(model) == batch.body_rules
        )
        self._rules_of, self._unchanged = registry, model if same else None
        return self._unchanged

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
        self, lines: list[InputLine], turns: Turns
    ) -> tuple[list[list[_Parsed]], dict[int, LineResult]]:
        """The lines parsed (those that fail, as results) and grouped by call shape."""
        work = self._work
        failed: dict[int, LineResult] = {}
        by_shape: dict[tuple[object, ...], list[_Group]] = {}
        allows = work.policy.allows(self._key)
        registry = work.gateway.serving.registry
        batch_id = self._batch.id
        for line in lines:
            try:
                job = self._job_now(line, registry, allows, batch_id)
                if job is None:  # big texts: checked with their count in a thread
                    job = await parse_embedding_body(line.body, registry, batch_id, allows)
            except DomainError as exc:
                failed[line.number] = self.failed(line, exc)
                continue
            shape = (job.model.id, job.dimensions, job.input_type, job.user, job.texts is None)
            groups = by_shape.get(shape)
            if groups is None:
                groups = by_shape[shape] = [_Group([], _group_inputs(job))]
            parsed, size = _Parsed(line, job), _job_bytes(job)
            if not groups[-1].take(parsed, size):
                groups.append(_Group([parsed], groups[-1].most, len(job), size))
            if turns.due():
                await turns.give()
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
        await job.count_tokens_in_steps(COUNT_STEP)
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
        """Each line its rows of the group's vectors and the usage of its own items, as the
        endpoint would have answered it; the vectors converted for the wire once for the group,
        each line (with its body) serialised in one pass."""
        batch, policy = self._batch, self._work.policy
        assert result.item_tokens is not None and result.item_cached is not None
        item_tokens, item_cached = result.item_tokens, result.item_cached
        # Per line: its items' tokens, and those of them the cache answered (prefix sums).
        ends = list(accumulate(len(p.job) for p in parsed))
        tokens_to = [0, *accumulate(item_tokens)]
        cached_to = [0, *accumulate(map(mul, item_tokens, item_cached))]  # hit: True = 1
        prompts, cached = [], []
        start = 0
        for end in ends:
            prompts.append(tokens_to[end] - tokens_to[start])
            cached.append(cached_to[end] - cached_to[start])
            start = end
        # What went upstream, shared among the lines by what each sent (cache hits sent nothing).
        upstream = split_proportionally(
            result.upstream_tokens, [p - c for p, c in zip(prompts, cached, strict=True)]
        )
        # The group's lines in the key's usage at once (each as a request), now that what they
        # sent upstream is spent: even if the batch is cancelled before they are written.
        policy.record_line_usage(
            batch.owner, job, sum(prompts), sum(cached), sum(upstream), len(parsed)
        )
        price = job.model.config.pricing.per_million_tokens
        rows: dict[bool, Any] = {}  # the group's vectors for the wire, by want_base64
        results: dict[int, LineResult] = {}
        turns = Turns()
        start = 0
        for p, end, prompt, hit, up in zip(parsed, ends, prompts, cached, upstream, strict=True):
            line, line_job = p.line, p.job
            wire = rows.get(line_job.want_base64)
            if wire is None:
                wire = rows[line_job.want_base64] = wire_rows(result.vectors, line_job.want_base64)
            payload = embeddings_payload(line_job.model.id, wire[start:end], prompt)
            line_id, request_id = line_ids(batch.id, line.number)
            results[line.number] = LineResult(
                True,
                output_line_of(line_id, line.custom_id, request_id, payload),
                prompt,
                hit,
                up,
                up * price / 1_000_000,
            )
            start = end
            if turns.due():
                await turns.give()
        return results


def _group_inputs(job: EmbeddingJob) -> int:
    routes = job.model.routes
    first = routes[0].policy.max_batch_size if routes else MAX_INPUTS
    return max(1, min(GROUP_INPUTS, first))


def _job_bytes(job: EmbeddingJob) -> int:
    texts = job.texts
    if texts is not None:
        if all(map(str.isascii, texts)):
            return sum(map(len, texts))
        return sum(len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts)
    return sum(map(len, job.token_ids or ()))
