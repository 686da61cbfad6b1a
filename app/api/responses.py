"""Encode results for the client with orjson, building no per-value Python objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from app.encoding import to_base64_rows, to_float_rows


class JSONBytesResponse(Response):
    media_type = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> JSONBytesResponse:
    return JSONBytesResponse(orjson.dumps(content), status_code=status, headers=headers)


def embeddings_body(
    model_id: str, vectors: np.ndarray, want_base64: bool, prompt_tokens: int
) -> bytes:
    rows: Any = to_base64_rows(vectors) if want_base64 else to_float_rows(vectors)
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": row}
                for index, row in enumerate(rows)
            ],
            "model": model_id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
