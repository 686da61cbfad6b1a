"""Nugen v3's embeddings wire format.

``POST /api/v3/inference/embeddings`` (also ``/inference/embeddings``): string inputs only,
float vectors only (``encoding_format`` is ignored like any unknown field), a top-level
``object: "embedding"``, a float ``created``, ``usage.total_tokens`` only, ``{"detail": ...}``
errors.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from tests.fakes.vectors import Item, fake_token_count
from tests.fakes.wire import (
    BadRequest,
    EmbeddingCall,
    Entries,
    WireProtocol,
    parse_model_and_dimensions,
)


class NugenWire(WireProtocol):
    name = "nugen"
    paths = ("/api/v3/inference/embeddings", "/inference/embeddings")
    base_path = "/api/v3"

    def parse(self, payload: Any, native_dims: Callable[[str], int]) -> EmbeddingCall:
        model, native, requested = parse_model_and_dimensions(payload, native_dims)
        return EmbeddingCall(model, parse_input(payload["input"]), native, requested)

    def render(self, call: EmbeddingCall, entries: Entries) -> bytes:
        return orjson.dumps(
            {
                "id": f"embed-{uuid.uuid4().hex}",
                "object": "embedding",
                "data": [
                    {"object": "embedding", "embedding": vector, "index": i}
                    for i, vector in entries
                ],
                "model": call.model,
                "created": float(int(time.time())),
                "usage": {"total_tokens": sum(fake_token_count(item) for item in call.items)},
            }
        )

    def error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        return orjson.dumps({"detail": message})


def parse_input(value: Any) -> list[Item]:
    if isinstance(value, str):
        items: list[Item] = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise BadRequest("input must be a string or list of strings")
    if not items or not all(items):
        raise BadRequest("input must not be empty")
    return items
