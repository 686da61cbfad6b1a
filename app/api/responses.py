"""Encode results for the client with orjson, building no per-value Python objects."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from app.core.embedding_response import embeddings_body

__all__ = ["JSONBytesResponse", "embeddings_body", "json_response"]


class JSONBytesResponse(Response):
    media_type = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> JSONBytesResponse:
    return JSONBytesResponse(orjson.dumps(content), status_code=status, headers=headers)
