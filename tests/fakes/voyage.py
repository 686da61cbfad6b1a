"""Voyage AI's embeddings wire format.

``POST /v1/embeddings`` with ``Authorization: Bearer``: ``input`` (a string or strings),
``model``, ``input_type`` (null, ``query``, ``document``), ``truncation``,
``output_dimension``, ``output_dtype`` (this fake: float only), ``encoding_format`` (null or
``base64``: float32 bytes). Success: OpenAI-shaped ``data`` plus ``usage.total_tokens``;
errors: ``{"detail": "..."}``. Source: voyage-ai/voyageai-python (client.py, util.py,
api_resources/).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tests.fakes.vectors import Item, fake_token_count
from tests.fakes.wire import BadRequest, EmbeddingCall, Entries, WireProtocol, is_int


class VoyageWire(WireProtocol):
    name = "voyage"
    paths = ("/v1/embeddings",)
    base_path = "/v1"

    def parse(self, payload: Any, native_dims: Callable[[str], int]) -> EmbeddingCall:
        if not isinstance(payload, dict):
            raise BadRequest("Request body must be a JSON object.")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("Field 'model' is required.")
        if payload.get("input_type") not in (None, "query", "document"):
            raise BadRequest("Value 'input_type' must be one of None, 'query', 'document'.")
        if payload.get("truncation") not in (None, True, False):
            raise BadRequest("Value 'truncation' must be a boolean.")
        if payload.get("output_dtype") not in (None, "float"):
            raise BadRequest("this fake renders output_dtype 'float' only")
        fmt = payload.get("encoding_format")
        if fmt not in (None, "base64"):
            raise BadRequest("Value 'encoding_format' must be None or 'base64'.")
        native = native_dims(model)
        requested = payload.get("output_dimension")
        if requested is not None and (not is_int(requested) or not 1 <= requested <= native):
            raise BadRequest(f"Value 'output_dimension' is not supported for model {model}.")
        if "dimensions" in payload:
            raise BadRequest("Unexpected field 'dimensions'.")
        return EmbeddingCall(
            model, _items(payload.get("input")), native, requested, base64=fmt == "base64"
        )

    def render(self, call: EmbeddingCall, entries: Entries) -> bytes:
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": vector, "index": i}
                    for i, vector in entries
                ],
                "model": call.model,
                "usage": {"total_tokens": sum(fake_token_count(item) for item in call.items)},
            }
        )

    def error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        return orjson.dumps({"detail": message})


def _items(value: Any) -> list[Item]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise BadRequest("Field 'input' must be a string or a non-empty list of strings.")
    return list(items)
