"""JSON responses, encoded with orjson. (The embeddings body itself is built below the HTTP
layer, in app/core/embedding_response.py, for the Batch API's lines too.)"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["JSONBytesResponse", "json_response"]


class JSONBytesResponse(Response):
    media_type = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> JSONBytesResponse:
    return JSONBytesResponse(orjson.dumps(content), status_code=status, headers=headers)
