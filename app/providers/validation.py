"""Trust nothing an upstream sends: one finite vector of the right length per input, in order."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.encoding import from_base64


class MalformedResponse(ValueError):
    pass


def vectors_from_items(items: Any, count: int, dims: int) -> np.ndarray:
    """Turn OpenAI-style `data` items into a (count, dims) float32 matrix, ordered by `index`."""
    if not isinstance(items, list):
        raise MalformedResponse("response has no 'data' list")
    if len(items) != count:
        raise MalformedResponse(f"expected {count} vectors, got {len(items)}")
    rows: list[Any] = [None] * count
    for position, item in enumerate(items):
        if not isinstance(item, dict) or "embedding" not in item:
            raise MalformedResponse(f"data[{position}] has no embedding")
        index = item.get("index", position)
        if type(index) is not int or not 0 <= index < count or rows[index] is not None:
            raise MalformedResponse(f"data[{position}] has a missing, duplicate or bad index")
        rows[index] = item["embedding"]
    if isinstance(rows[0], str):
        return _stack_base64(rows, dims)
    return _stack_floats(rows, count, dims)


def _stack_floats(rows: list[Any], count: int, dims: int) -> np.ndarray:
    try:
        matrix = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError):
        raise MalformedResponse("vectors are not equal-length lists of numbers") from None
    if matrix.shape != (count, dims):
        raise MalformedResponse(f"expected {dims} dimensions, got {_width(matrix)}")
    return _finite(matrix)


def _stack_base64(rows: list[Any], dims: int) -> np.ndarray:
    matrix = np.empty((len(rows), dims), dtype=np.float32)
    for index, text in enumerate(rows):
        if not isinstance(text, str):
            raise MalformedResponse("vectors mix base64 and floats")
        try:
            vector = from_base64(text)
        except ValueError:
            raise MalformedResponse(f"vector {index} is not valid base64 float32") from None
        if vector.shape[0] != dims:
            raise MalformedResponse(f"expected {dims} dimensions, got {vector.shape[0]}")
        matrix[index] = vector
    return _finite(matrix)


def _finite(matrix: np.ndarray) -> np.ndarray:
    if not np.isfinite(matrix).all():
        raise MalformedResponse("vectors contain NaN or infinite values")
    return matrix


def _width(matrix: np.ndarray) -> str:
    return str(matrix.shape[1]) if matrix.ndim == 2 else "ragged vectors"
