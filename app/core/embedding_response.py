"""The body of an embeddings response, as the synchronous endpoint answers it and as a Batch API
output line carries it (`response.body`): one builder, so both are the same bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from app.encoding import to_base64_rows, to_float_rows


def embeddings_body(
    model_id: str, vectors: np.ndarray, want_base64: bool, prompt_tokens: int
) -> bytes:
    """orjson, building no per-value Python objects."""
    return orjson.dumps(
        embeddings_payload(model_id, wire_rows(vectors, want_base64), prompt_tokens),
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def wire_rows(vectors: np.ndarray, want_base64: bool) -> Any:
    """The vectors as the response carries them: base64 strings, or float64 rows (each float32
    exactly). Sliceable: the Batch API converts a whole group's vectors at once and gives each
    line its rows."""
    return to_base64_rows(vectors) if want_base64 else to_float_rows(vectors)


def embeddings_payload(model_id: str, rows: Any, prompt_tokens: int) -> dict[str, Any]:
    """The response as orjson serialises it (with OPT_SERIALIZE_NUMPY), from `wire_rows`: a
    Batch API output line nests it, serialised in the same pass as the line."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": row}
            for index, row in enumerate(rows)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
