"""float32 vectors ⇄ the wire: base64 of little-endian float32, and JSON floats."""

from __future__ import annotations

import numpy as np
import pybase64

FLOAT32_LE = np.dtype("<f4")


def to_base64_rows(vectors: np.ndarray) -> list[str]:
    """One standard, padded base64 string per row, of the row's little-endian float32 bytes."""
    data = np.ascontiguousarray(vectors, dtype=FLOAT32_LE)
    encode = pybase64.b64encode_as_string
    return [encode(row.tobytes()) for row in data]


def from_base64(text: str) -> np.ndarray:
    """Decode one base64 vector; raises ValueError on anything that is not whole float32s."""
    raw = pybase64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("base64 vector is not a whole number of float32 values")
    return np.frombuffer(raw, dtype=FLOAT32_LE)


def to_float_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 values widened to float64, so JSON carries each float32 exactly, as OpenAI does."""
    return np.ascontiguousarray(vectors, dtype=np.float64)
