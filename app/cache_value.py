"""One cached item's Redis value: its vector, then the tokens the item counts for.

The value is the vector's little-endian float32 bytes followed by a little-endian uint32: the
item's share of the usage its upstream call reported, so a hit reports what its miss did.
Without the count (entries written before it existed, or when the upstream reported no usage)
the value is the bare vector and the gateway's own count applies. The key names the width, so
the length alone tells the two apart: nothing to bump, and no cached vector is lost.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Protocol

import numpy as np

from app.encoding import FLOAT32_LE

_COUNT = struct.Struct("<I")
MAX_COUNT = 2**32 - 1


class CacheEntry(Protocol):
    """What the cache keeps per item. A fresh item's `tokens` may be worked out only when
    first read: queued entries are encoded by the background writer, after the response."""

    @property
    def vector(self) -> np.ndarray: ...  # (dims,) float32

    @property
    def tokens(self) -> int | None: ...  # None: the gateway's own (cl100k) count applies


class CachedItem(NamedTuple):
    vector: np.ndarray
    tokens: int | None


def encode(item: CacheEntry) -> bytes:
    vector = np.ascontiguousarray(item.vector, FLOAT32_LE).tobytes()
    if item.tokens is None or not 0 <= item.tokens <= MAX_COUNT:
        return vector
    return vector + _COUNT.pack(item.tokens)


def decode(value: bytes | None, dims: int) -> CachedItem | None:
    """The item in `value`, or None when there is none or it is not `dims` wide."""
    if not value:
        return None
    width = dims * FLOAT32_LE.itemsize
    if len(value) == width:
        return CachedItem(np.frombuffer(value, dtype=FLOAT32_LE), None)
    if len(value) == width + _COUNT.size:
        vector = np.frombuffer(value, dtype=FLOAT32_LE, count=dims)
        return CachedItem(vector, _COUNT.unpack_from(value, width)[0])
    return None
