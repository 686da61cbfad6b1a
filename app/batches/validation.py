"""A batch's input file, checked line by line as it streams from the object store, and cut into
chunks: the work a batch is before any line runs.

Every line's body goes through the embeddings endpoint's own checks
(app/core/embedding_request.py), with the creating key's model allow-list: whatever the
synchronous endpoint would refuse with a 400 fails the batch here, with the line's number, before
anything is spent. What only running a line can tell (an upstream that rejects an input, a budget
that runs out, the window that ends) fails that line alone, in the error file.

Chunks are contiguous byte ranges of whole lines, each at most `chunk_lines` lines,
`chunk_inputs` inputs and `chunk_bytes` bytes (and at least one line): the unit a worker claims,
runs and completes exactly once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from app.batches.lines import DUPLICATE_MESSAGE, InputLine, is_blank, parse_line, split_lines
from app.batches.records import BatchError, ChunkPlan
from app.batches.turns import Turns
from app.config.registry import Registry
from app.core.embedding_request import parse_embedding_body, parse_small_embedding_body
from app.core.errors import InvalidEmbeddingRequest, ModelUnavailable

MAX_REPORTED_ERRORS = 100
# How often a long validation renews its lease and looks for a cancel (a store round trip, so
# by time: every so many lines, a fast validation of 20,000 lines waited on 20 of them).
CHECK_EVERY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Limits:
    max_lines: int
    max_line_bytes: int
    chunk_lines: int
    chunk_inputs: int
    chunk_bytes: int


@dataclass(slots=True)
class Validated:
    plans: list[ChunkPlan] = field(default_factory=list)
    lines: int = 0  # requests (non-blank lines)
    inputs: int = 0
    model: str | None = None
    errors: list[BatchError] = field(default_factory=list)


class ValidationStopped(Exception):
    """`keep_going` said stop (the batch was cancelled, or this worker lost its lease)."""


@dataclass(slots=True)
class _Open:
    """The chunk being filled."""

    start: int
    first_line: int
    lines: int = 0
    inputs: int = 0
    end: int = 0


async def validate_file(
    chunks: AsyncIterator[bytes],
    *,
    registry: Registry,
    allows: Callable[[str], bool] | None,
    limits: Limits,
    endpoint: str,
    keep_going: Callable[[], Awaitable[bool]],
) -> Validated:
    result = Validated()
    seen: set[bytes] = set()  # custom_ids, by digest: bounded memory whatever their length
    current: _Open | None = None
    next_start = 0

    def fail(error: BatchError) -> bool:
        result.errors.append(error)
        return len(result.errors) >= MAX_REPORTED_ERRORS

    turns = Turns()
    check_at = time.monotonic() + CHECK_EVERY_SECONDS
    stopped = False  # too many errors, or too many lines
    async for raws in split_lines(chunks, limits.max_line_bytes):
        if stopped:
            break
        if time.monotonic() >= check_at:
            if not await keep_going():
                raise ValidationStopped()
            check_at = time.monotonic() + CHECK_EVERY_SECONDS
        for raw in raws:
            if turns.due():
                await turns.give()
            if current is None:
                current = _Open(next_start, raw.number)
            current.end = raw.end
            if raw.data is not None and is_blank(raw.data):
                continue
            result.lines += 1
            if result.lines > limits.max_lines:
                fail(
                    BatchError(
                        "too_many_tasks",
                        f"The file has more than {limits.max_lines} requests, the most one batch "
                        "may have.",
                        None,
                        raw.number,
                    )
                )
                stopped = True
                break
            inputs = _check(raw.data, raw.number, result, seen, registry, allows, limits, endpoint)
            if isinstance(inputs, InputLine):  # a body too big to check without a thread
                inputs = await _check_big(inputs, result, registry, allows)
            if isinstance(inputs, BatchError):
                if fail(inputs):
                    stopped = True
                    break
                continue
            current.lines += 1
            current.inputs += inputs
            result.inputs += inputs
            if (
                current.lines >= limits.chunk_lines
                or current.inputs >= limits.chunk_inputs
                or current.end - current.start >= limits.chunk_bytes
            ):
                result.plans.append(_plan(len(result.plans), current))
                next_start, current = current.end, None
    if current is not None and current.lines:
        result.plans.append(_plan(len(result.plans), current))
    if not result.errors and result.lines == 0:
        result.errors.append(
            BatchError("empty_file", "The input file has no requests.", None, None)
        )
    return result


def _check(
    data: bytes | None,
    number: int,
    result: Validated,
    seen: set[bytes],
    registry: Registry,
    allows: Callable[[str], bool] | None,
    limits: Limits,
    endpoint: str,
) -> int | BatchError | InputLine:
    """The line's number of inputs, or what is wrong with it; the line itself when its body is
    too big to check here (`_check_big`)."""
    if data is None:
        return BatchError(
            "line_too_long",
            f"This line is longer than {limits.max_line_bytes} bytes, the most one request "
            "may have.",
            None,
            number,
        )
    line = parse_line(data, number, endpoint)
    if isinstance(line, BatchError):
        return line
    raw_id = line.custom_id.encode()
    digest = b"h" + hashlib.blake2b(raw_id, digest_size=16).digest() if len(raw_id) > 16 else raw_id
    if digest in seen:
        return BatchError("duplicate_custom_id", DUPLICATE_MESSAGE, "custom_id", number)
    seen.add(digest)
    try:
        job = parse_small_embedding_body(line.body, registry, "batch-validation", allows)
    except (InvalidEmbeddingRequest, ModelUnavailable) as exc:
        return _body_error(exc, number)
    if job is None:
        return line
    return _same_model(result, job.model.id, number) or len(job)


async def _check_big(
    line: InputLine, result: Validated, registry: Registry, allows: Callable[[str], bool] | None
) -> int | BatchError:
    """`_check`'s end for a body whose texts are counted in a thread."""
    try:
        job = await parse_embedding_body(line.body, registry, "batch-validation", allows)
    except (InvalidEmbeddingRequest, ModelUnavailable) as exc:
        return _body_error(exc, line.number)
    return _same_model(result, job.model.id, line.number) or len(job)


def _body_error(exc: InvalidEmbeddingRequest | ModelUnavailable, number: int) -> BatchError:
    if isinstance(exc, ModelUnavailable):
        return BatchError("model_unavailable", exc.message, "body.model", number)
    param = f"body.{exc.param}" if exc.param else "body"
    return BatchError(exc.code or "invalid_request", exc.message, param, number)


def _same_model(result: Validated, model_id: str, number: int) -> BatchError | None:
    if result.model is None:
        result.model = model_id
    elif model_id != result.model:
        return BatchError(
            "model_mismatch",
            f"Every request of a batch must use the same model: the first uses "
            f"'{result.model}', this one '{model_id}'.",
            "body.model",
            number,
        )
    return None


def _plan(index: int, chunk: _Open) -> ChunkPlan:
    return ChunkPlan(
        index=index,
        start=chunk.start,
        end=chunk.end,
        first_line=chunk.first_line,
        lines=chunk.lines,
        inputs=chunk.inputs,
    )
