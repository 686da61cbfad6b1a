"""Deterministic vectors and token counts, with the caches that keep the fake fast under load.

Tests compute exactly what the gateway should return with :func:`fake_vector`; the servers
serialise the same vectors through :func:`vector_fragment`, cached per input.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import orjson

# An input as the fakes key it: a text, or a token-id array made hashable.
Item = str | tuple[int, ...]

# Bounded: a cached 3072-dim float fragment is ~60 KB, so this stays well under a few hundred MB.
_CACHE_SIZE = 4096


def item_key(item: str | Sequence[int]) -> Item:
    return item if isinstance(item, str) else tuple(int(i) for i in item)


def _item_text(key: Item) -> str:
    if isinstance(key, str):
        return key
    return "tokens:" + ",".join(map(str, key))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def cached_vector(
    model: str, key: Item, native_dims: int, requested_dims: int | None
) -> np.ndarray:
    """The read-only vector for ``key``; shared between callers, so never mutate it."""
    digest = hashlib.sha256((model + "\x00" + _item_text(key)).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    vec = rng.standard_normal(native_dims)
    vec /= np.linalg.norm(vec)
    if requested_dims is not None and requested_dims < native_dims:
        vec = vec[:requested_dims]
        vec = vec / np.linalg.norm(vec)
    out = vec.astype(np.float32)
    out.flags.writeable = False
    return out


def fake_vector(
    model: str,
    item: str | Sequence[int],
    native_dims: int,
    requested_dims: int | None = None,
) -> np.ndarray:
    """The exact float32 vector the fake returns for ``item`` (a text or a token-id list).

    Seeded from the first 8 bytes (big-endian) of sha256(``model + "\\x00" + text``), where a
    token list's text is ``"tokens:" + ",".join(ids)``; ``standard_normal(native_dims)`` is
    L2-normalised, then truncated to ``requested_dims`` and re-normalised (Matryoshka-like).
    """
    if requested_dims is not None and not 1 <= requested_dims <= native_dims:
        raise ValueError(f"requested_dims must be in [1, {native_dims}], got {requested_dims}")
    return cached_vector(model, item_key(item), native_dims, requested_dims).copy()


def fake_token_count(item: str | Sequence[int]) -> int:
    """Usage tokens for one input: whitespace-separated words, or token ids; at least 1."""
    if isinstance(item, str):
        return max(1, len(item.split()))
    return max(1, len(item))


def float_json(vec: np.ndarray) -> bytes:
    # float64 repr of each float32 value, which is what OpenAI puts on the wire.
    return orjson.dumps(vec.astype(np.float64).tolist())


def base64_json(vec: np.ndarray) -> bytes:
    return orjson.dumps(base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii"))


def array_fragment(vec: np.ndarray, b64: bool) -> orjson.Fragment:
    return orjson.Fragment(base64_json(vec) if b64 else float_json(vec))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def vector_fragment(
    model: str, key: Item, native_dims: int, requested_dims: int | None, b64: bool
) -> orjson.Fragment:
    """The serialised vector for ``key``, ready to splice into a response body."""
    return array_fragment(cached_vector(model, key, native_dims, requested_dims), b64)


def nan_fragment(vec: np.ndarray, b64: bool) -> orjson.Fragment:
    """``vec`` serialised with its first value replaced by NaN."""
    if b64:
        poisoned = vec.copy()
        poisoned[0] = np.nan
        return orjson.Fragment(base64_json(poisoned))
    # orjson refuses to emit NaN, so splice the bare literal into the serialised array.
    rest = float_json(vec[1:])
    return orjson.Fragment(b"[NaN]" if rest == b"[]" else b"[NaN," + rest[1:])
