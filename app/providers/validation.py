"""Trust nothing an upstream sends: one finite vector of the right length per input, in order."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import simdjson

from app.encoding import from_base64


class MalformedResponse(ValueError):
    pass


def parse_embeddings(raw: bytes, count: int, dims: int) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Parse an OpenAI-style body straight into a (count, dims) float32 matrix, plus its usage.

    simdjson hands each float array over as one buffer of doubles, so a 2048 x 1536 response
    never becomes three million Python floats; base64 vectors are decoded as they are.
    """
    document = load_object(raw)
    data = document.get("data")
    if not isinstance(data, simdjson.Array):
        raise MalformedResponse("response has no 'data' list")
    if len(data) != count:
        raise MalformedResponse(f"expected {count} vectors, got {len(data)}")
    matrix = np.empty((count, dims), dtype=np.float32)
    seen = np.zeros(count, dtype=bool)
    with np.errstate(over="ignore"):  # out-of-range values become inf, refused below
        _fill(matrix, seen, data, count, dims)
    usage = document.get("usage")
    return _finite(matrix), usage.as_dict() if isinstance(usage, simdjson.Object) else None


def load_object(raw: bytes) -> Any:
    """The body as a simdjson object; valid only until this thread parses again."""
    try:
        document = _parse(raw)
    except ValueError:
        raise MalformedResponse("body is not JSON") from None
    if not isinstance(document, simdjson.Object):
        raise MalformedResponse("response is not a JSON object")
    return document


def parse_vector_list(
    items: Any, count: int, dims: int, what: str, field: str | None = None
) -> np.ndarray:
    """A JSON list of `count` vectors in input order (or of objects holding one in `field`)
    as a (count, dims) float32 matrix; `what` names the list in error messages."""
    if not isinstance(items, simdjson.Array):
        raise MalformedResponse(f"response has no {what!r} list")
    if len(items) != count:
        raise MalformedResponse(f"expected {count} vectors, got {len(items)}")
    matrix = np.empty((count, dims), dtype=np.float32)
    with np.errstate(over="ignore"):
        for position, item in enumerate(items):
            if field is not None:
                if not isinstance(item, simdjson.Object):
                    raise MalformedResponse(f"{what}[{position}] is not an object")
                item = item.get(field)
            vector = _vector(item, position)
            if vector.shape[0] != dims:
                raise MalformedResponse(f"expected {dims} dimensions, got {vector.shape[0]}")
            matrix[position] = vector
    return _finite(matrix)


def _fill(matrix: np.ndarray, seen: np.ndarray, data: Any, count: int, dims: int) -> None:
    # Iterated, not indexed: a simdjson array finds its n-th element by walking from the start.
    for position, item in enumerate(data):
        if not isinstance(item, simdjson.Object):
            raise MalformedResponse(f"data[{position}] is not an object")
        index = item.get("index", position)
        if type(index) is not int or not 0 <= index < count or seen[index]:
            raise MalformedResponse(f"data[{position}] has a missing, duplicate or bad index")
        seen[index] = True
        vector = _vector(item.get("embedding"), position)
        if vector.shape[0] != dims:
            raise MalformedResponse(f"expected {dims} dimensions, got {vector.shape[0]}")
        matrix[index] = vector


_parsers = threading.local()


def _parse(raw: bytes) -> Any:
    """Parse with this thread's reusable parser (~40 % faster on large bodies than a new one).

    A parser's documents stay valid only until its next parse, and it refuses to parse again
    while any of them is still referenced (a traceback can hold one): then start a new one.
    """
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    try:
        return parser.parse(raw)
    except RuntimeError:
        _parsers.parser = simdjson.Parser()
        return _parsers.parser.parse(raw)


def _vector(embedding: Any, position: int) -> np.ndarray:
    if isinstance(embedding, str):
        try:
            return from_base64(embedding)
        except ValueError:
            raise MalformedResponse(f"vector {position} is not valid base64 float32") from None
    if isinstance(embedding, simdjson.Array):
        try:
            return np.frombuffer(embedding.as_buffer(of_type="d"), dtype=np.float64)
        except TypeError:
            raise MalformedResponse(f"vector {position} is not a list of numbers") from None
    raise MalformedResponse(f"vector {position} is missing")


def _finite(matrix: np.ndarray) -> np.ndarray:
    if not np.isfinite(matrix).all():
        raise MalformedResponse("vectors contain NaN or infinite values")
    return matrix
