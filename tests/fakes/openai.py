"""OpenAI's embeddings wire format, which NanoGPT and AI/ML API speak too.

``POST /v1/embeddings`` (also ``/api/v1/embeddings``): strings or token-id arrays,
``encoding_format`` float or base64, ``{"error": {message, type, param, code}}`` errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tests.fakes.vectors import Item, fake_token_count
from tests.fakes.wire import (
    BadRequest,
    EmbeddingCall,
    Entries,
    WireProtocol,
    is_int,
    parse_model_and_dimensions,
)

_ERROR_TYPES: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class OpenAIWire(WireProtocol):
    name = "openai"
    paths = ("/v1/embeddings", "/api/v1/embeddings")
    base_path = "/v1"

    def parse(self, payload: Any, native_dims: Callable[[str], int]) -> EmbeddingCall:
        model, native, requested = parse_model_and_dimensions(payload, native_dims)
        items = parse_input(payload["input"])
        fmt = payload.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise BadRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
        return EmbeddingCall(model, items, native, requested, base64=fmt == "base64")

    def render(self, call: EmbeddingCall, entries: Entries) -> bytes:
        tokens = sum(fake_token_count(item) for item in call.items)
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector}
                    for i, vector in entries
                ],
                "model": call.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        err_type = _ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        return orjson.dumps(
            {"error": {"message": message, "type": err_type, "param": param, "code": None}}
        )


def parse_input(value: Any) -> list[Item]:
    """OpenAI's four input shapes: a string, strings, one token array, token arrays."""
    if isinstance(value, str):
        if not value:
            raise BadRequest("input must not be empty", param="input")
        return [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("input must be a non-empty string or array", param="input")
    if all(is_int(v) for v in value):
        return [tuple(value)]
    items: list[Item] = []
    for v in value:
        if isinstance(v, str) and v:
            items.append(v)
        elif isinstance(v, list) and v and all(is_int(t) for t in v):
            items.append(tuple(v))
        else:
            raise BadRequest(
                "input items must be non-empty strings or non-empty arrays of token ids",
                param="input",
            )
    if len({type(i) for i in items}) > 1:
        raise BadRequest("input must not mix strings and token arrays", param="input")
    return items
