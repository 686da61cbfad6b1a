"""Cohere's v2 embed wire format.

``POST /v2/embed`` with ``Authorization: Bearer``: ``model``, ``texts`` (at most 96), the
required ``input_type``, ``embedding_types`` (this fake renders ``float``), and
``output_dimension``. Success: ``{"id", "embeddings": {"float": [[...], ...]}, "texts",
"meta": {"api_version", "billed_units": {"input_tokens"}}, "response_type"}``; errors:
``{"id", "message"}``. Source: cohere-ai/cohere-python (src/cohere/v2/raw_client.py, types/).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson

from tests.fakes.vectors import fake_token_count
from tests.fakes.wire import BadRequest, EmbeddingCall, Entries, WireProtocol, is_int

INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
MAX_TEXTS = 96


class CohereWire(WireProtocol):
    name = "cohere"
    paths = ("/v2/embed",)
    base_path = ""

    def parse(self, payload: Any, native_dims: Callable[[str], int]) -> EmbeddingCall:
        if not isinstance(payload, dict):
            raise BadRequest("invalid request: body must be a JSON object")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("invalid request: model is required")
        if payload.get("input_type") not in INPUT_TYPES:
            raise BadRequest("invalid request: input_type must be one of " + ", ".join(INPUT_TYPES))
        texts = payload.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("invalid request: texts must be a non-empty list of strings")
        if len(texts) > MAX_TEXTS:
            raise BadRequest(f"invalid request: texts must have at most {MAX_TEXTS} elements")
        types = payload.get("embedding_types", ["float"])
        if types != ["float"]:
            raise BadRequest("this fake renders embedding_types ['float'] only")
        native = native_dims(model)
        requested = payload.get("output_dimension")
        if requested is not None and (not is_int(requested) or not 1 <= requested <= native):
            raise BadRequest(f"invalid request: output_dimension must be at most {native}")
        if "dimensions" in payload:
            raise BadRequest("invalid request: unknown field: parameter dimensions is not valid")
        return EmbeddingCall(model, list(texts), native, requested)

    def render(self, call: EmbeddingCall, entries: Entries) -> bytes:
        return orjson.dumps(
            {
                "id": str(uuid.uuid4()),
                "embeddings": {"float": [vector for _, vector in entries]},
                "texts": call.items,
                "meta": {
                    "api_version": {"version": "2"},
                    "billed_units": {
                        "input_tokens": sum(fake_token_count(item) for item in call.items)
                    },
                },
                "response_type": "embeddings_by_type",
            }
        )

    def error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        return orjson.dumps({"id": str(uuid.uuid4()), "message": message})
