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
