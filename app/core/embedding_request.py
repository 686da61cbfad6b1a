"""OpenAI's embeddings request contract, checked by hand: cheaper than a model on the hot path,
and every failure gets a message and `param` a client can act on.

Below the HTTP layer, so that the synchronous endpoint (app/api/embeddings.py) and the Batch
API's lines (app/batches/) validate a body exactly alike: failures are domain errors
(app/core/errors.py), rendered by app/api/errors.py's one table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from app.config.registry import MAX_INPUTS, Model, Registry
from app.core.errors import InvalidEmbeddingRequest, ModelUnavailable, UnknownModel
from app.core.job import EmbeddingJob
from app.core.tokens import vocabulary_size

# tiktoken runs at a few MB/s: past this many bytes of text, count in a worker thread.
TOKENISE_OFF_LOOP_BYTES = 64 * 1024
MAX_TOTAL_TOKENS = 300_000
ENCODING_FORMATS = ("float", "base64")
# Retrieval models embed queries and documents differently; each provider maps these.
INPUT_TYPES = ("query", "document")


_INPUT_SHAPE = (
    "'input' must be a non-empty string, an array of non-empty strings, an array of token IDs, "
    "or an array of non-empty token-ID arrays"
)


async def parse_embedding_request(
    body: bytes,
    registry: Registry,
    request_id: str,
    allows: Callable[[str], bool] | None = None,
) -> EmbeddingJob:
    """`allows`: the caller's model allow-list; a model outside it is answered as unknown."""
    job = _parse(_decode(body), registry, request_id, allows)
    if job.texts is not None and _text_bytes(job.texts) > TOKENISE_OFF_LOOP_BYTES:
        await job.count_tokens_in_thread()  # big inputs would hold the event loop for long
    _check_token_limits(job, job.model.config.max_tokens, job.texts)
    return job


def body_rules(model: Model) -> str:
    """What checking a body for `model` depends on, besides the body: equal rules, equal
    verdicts. The Batch API keeps it with a validated batch, so that running a line re-checks
    nothing while the model's rules are still the ones its body was checked under."""
    config = model.config
    return (
        f"{model.id}|{config.dimensions}|{config.supports_dimensions}|{config.max_tokens}|"
        f"{MAX_INPUTS}|{MAX_TOTAL_TOKENS}|{vocabulary_size()}"
    )


def checked_embedding_body(data: dict[str, Any], model: Model, request_id: str) -> EmbeddingJob:
    """The job of a body that `parse_embedding_body` accepted for `model` under its current
    `body_rules`: normalised exactly as `_parse` does (the same job), without checking again.
    Anything else must go through `parse_embedding_body`."""
    raw = data["input"]
    texts: list[str] | None
    token_ids: list[list[int]] | None
    if isinstance(raw, str):
        texts, token_ids = [raw], None
    elif isinstance(raw[0], str):
        texts, token_ids = raw, None
    elif type(raw[0]) is int:
        texts, token_ids = None, [raw]
    else:
        texts, token_ids = None, raw
    dimensions = data.get("dimensions")
    if dimensions == model.config.dimensions:
        dimensions = None  # its own width is dropped (`_checked_dimensions`)
    return EmbeddingJob(
        model=model,
        texts=texts,
        token_ids=token_ids,
        dimensions=dimensions,
        user=data.get("user"),
        want_base64=data.get("encoding_format") == "base64",
        request_id=request_id,
        input_type=data.get("input_type"),
    )


def _text_bytes(texts: list[str]) -> int:
    return sum(_byte_bounds(texts))


def _byte_bounds(texts: list[str]) -> list[int]:
    """Each text's UTF-8 length: a cl100k token spans at least one byte, so it bounds the
    text's tokens from above."""
    if all(map(str.isascii, texts)):  # the usual case, without a Python step per text
        return list(map(len, texts))
    return [len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts]


def _echo(value: str, limit: int = 80) -> str:
    """A client's value quoted in an error message, cut short: never a megabyte echoed back."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


async def parse_embedding_body(
    data: Any,
    registry: Registry,
    request_id: str,
    allows: Callable[[str], bool] | None = None,
) -> EmbeddingJob:
    """`parse_embedding_request` for a body already decoded from JSON (a Batch API line's)."""
    job = _parse(data, registry, request_id, allows)
    if job.texts is not None and _text_bytes(job.texts) > TOKENISE_OFF_LOOP_BYTES:
        await job.count_tokens_in_thread()
    _check_token_limits(job, job.model.config.max_tokens, job.texts)
    return job


def parse_small_embedding_body(
    data: Any,
    registry: Registry,
    request_id: str,
    allows: Callable[[str], bool] | None = None,
) -> EmbeddingJob | None:
    """`parse_embedding_body` without a turn of the event loop, for the Batch API's many small
    bodies (an `await` per line costs more than checking it): the same checks, the same errors;
    None when the body's text is big enough that counting it belongs in a thread (then await
    `parse_embedding_body`)."""
    job = _parse(data, registry, request_id, allows)
    texts = job.texts
    if texts is None:
        _check_token_limits(job, job.model.config.max_tokens, None)
        return job
    bounds = _byte_bounds(texts)
    if sum(bounds) > TOKENISE_OFF_LOOP_BYTES:
        return None
    _check_token_limits(job, job.model.config.max_tokens, texts, bounds)
    return job


def _decode(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. Send a JSON object with "
            "'model' and 'input'."
        ) from None


def _parse(
    data: Any, registry: Registry, request_id: str, allows: Callable[[str], bool] | None
) -> EmbeddingJob:
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.")

    model_id = data.get("model")
    if model_id is None:
        raise invalid_request("You must provide a 'model' parameter.", param="model")
    if not isinstance(model_id, str):
        raise invalid_request("'model' must be a string.", param="model")
    model = registry.get(model_id)
    # Checked before availability, so a key cannot tell a model it may not use from none.
    if model is None or (allows is not None and not allows(model_id)):
        raise UnknownModel(
            f"The model '{_echo(model_id)}' does not exist. GET /v1/embedding-models lists the "
            "models this gateway serves.",
            model_id,
        )
    if not model.available:
        raise ModelUnavailable(
            f"The model '{_echo(model_id)}' is not available: the gateway has no API key for any "
            f"of its providers. Set {' or '.join(model.missing_keys)} and restart the gateway."
        )

    encoding_format = data.get("encoding_format")
    if encoding_format is not None and encoding_format not in ENCODING_FORMATS:
        raise invalid_request(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )

    dimensions = data.get("dimensions")
    if dimensions is not None:
        dimensions = _checked_dimensions(
            dimensions, model.id, model.config.dimensions, model.config.supports_dimensions
        )

    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid_request("'user' must be a string.", param="user")

    input_type = data.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise invalid_request("'input_type' must be 'query' or 'document'.", param="input_type")

    texts, token_ids = _normalise_input(data.get("input", _MISSING))
    job = EmbeddingJob(
        model=model,
        texts=texts,
        token_ids=token_ids,
        dimensions=dimensions,
        user=user,
        want_base64=encoding_format == "base64",
        request_id=request_id,
        input_type=input_type,
    )
    return job


_MISSING: Any = object()


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> InvalidEmbeddingRequest:
    return InvalidEmbeddingRequest(message, param=param, code=code)


def _checked_dimensions(dimensions: Any, model_id: str, native: int, supported: bool) -> int | None:
    """The width to ask for, or None for the model's own. Its own width is accepted on every
    model (clients such as mem0 send `dimensions` whenever one is configured) and dropped: the
    request is then the same as one without it, upstream, in the cache and in usage."""
    if type(dimensions) is not int or dimensions < 1:
        raise invalid_request("'dimensions' must be an integer of at least 1.", param="dimensions")
    if dimensions == native:
        return None
    if not supported:
        raise invalid_request(
            f"The model '{model_id}' does not support 'dimensions' other than its own, {native}.",
            param="dimensions",
        )
    if dimensions > native:
        raise invalid_request(
            f"'dimensions' must be at most {native} for model '{model_id}'.", param="dimensions"
        )
    return dimensions


def _normalise_input(raw: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    if raw is _MISSING or raw is None:
        raise invalid_request("You must provide an 'input' parameter.", param="input")
    if isinstance(raw, str):
        if not raw:
            raise invalid_request("'input' cannot be an empty string.", param="input")
        return [raw], None
    if not isinstance(raw, list):
        raise invalid_request(_INPUT_SHAPE, param="input")
    if not raw:
        raise invalid_request("'input' cannot be an empty array.", param="input")
    first = raw[0]
    if isinstance(first, str):
        # The usual case checked without a Python step per item; the loop finds the culprit.
        if set(map(type, raw)) == {str} and "" not in raw:
            _check_count(raw)
            return raw, None
        for index, item in enumerate(raw):
            if not isinstance(item, str):
                raise invalid_request(_INPUT_SHAPE, param="input")
            if not item:
                raise invalid_request(f"input[{index}] is an empty string.", param="input")
        _check_count(raw)
        return raw, None
    if type(first) is int:
        _check_token_ids(raw, None)
        return None, [raw]
    if isinstance(first, list):
        for index, item in enumerate(raw):
            if not isinstance(item, list):
                raise invalid_request(_INPUT_SHAPE, param="input")
            if not item:
                raise invalid_request(f"input[{index}] is an empty token array.", param="input")
            _check_token_ids(item, index)
        _check_count(raw)
        return None, raw
    raise invalid_request(_INPUT_SHAPE, param="input")


def _check_count(items: list[Any]) -> None:
    if len(items) > MAX_INPUTS:
        raise invalid_request(
            f"'input' has {len(items)} items; at most {MAX_INPUTS} are allowed per request.",
            param="input",
        )


def _check_token_ids(ids: list[Any], index: int | None) -> None:
    where = "input" if index is None else f"input[{index}]"
    limit = vocabulary_size()
    for value in ids:
        if type(value) is not int:
            raise invalid_request(_INPUT_SHAPE, param="input")
        if not 0 <= value < limit:
            raise invalid_request(
                f"{where} has token ID {_echo(str(value), 24)}, outside cl100k_base "
                f"(0..{limit - 1}).",
                param="input",
            )


def _check_token_limits(
    job: EmbeddingJob, max_tokens: int, texts: list[str] | None, bounds: list[int] | None = None
) -> None:
    # A cl100k token spans at least one UTF-8 byte, so byte lengths bound token counts from
    # above; only inputs that could break a limit pay for tokenisation.
    if bounds is None:
        bounds = _byte_bounds(texts) if texts is not None else job.token_counts()
    total_bound = sum(bounds)
    if max(bounds) <= max_tokens and total_bound <= MAX_TOTAL_TOKENS:
        return
    counts = job.token_counts()
    for index, count in enumerate(counts):
        if count > max_tokens:
            raise invalid_request(
                f"input[{index}] has {count} tokens; model '{job.model.id}' accepts at most "
                f"{max_tokens} per input.",
                param="input",
                code="context_length_exceeded",
            )
    total = sum(counts)
    if total > MAX_TOTAL_TOKENS:
        raise invalid_request(
            f"The request has {total} tokens in all; at most {MAX_TOTAL_TOKENS} are allowed.",
            param="input",
            code="max_tokens_per_request",
        )
