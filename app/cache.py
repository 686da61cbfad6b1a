"""Per-input embedding cache in Redis: float32 bytes under a key naming model, width and input.

Keys are `{CACHE_KEY_PREFIX}{model}:{fingerprint}:{dims}:[{input_type}:]{sha256 of the input}`:
the fingerprint changes with the model's registry entry, and the prefix can be bumped by hand,
so stale vectors are never served. Reads are one MGET, writes one pipelined batch of SET EX.
Redis trouble never fails a request: the cache is bypassed (and skipped for a second, so a
hung Redis costs one timeout per second, not one per request).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import metrics
from app.encoding import FLOAT32_LE
from app.registry import Model

log = logging.getLogger("app.cache")

BYPASS_SECONDS = 1.0


def item_digest(item: str | list[int]) -> str:
    """The exact input, hashed: text and token IDs never collide with each other."""
    if isinstance(item, str):
        data = b"t\x00" + item.encode("utf-8")
    else:
        data = b"i\x00" + np.asarray(item, dtype="<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


def item_key(model: Model, dims: int, digest: str, input_type: str | None) -> str:
    """The one identity of an input item, for the cache (which adds its prefix) and for
    coalescing identical items in flight. A query and a document embed differently, so
    `input_type` is part of the key; without one the key keeps the form it always had, so
    vectors cached before stay valid."""
    kind = f"{input_type}:" if input_type else ""
    return f"{model.id}:{model.fingerprint}:{dims}:{kind}{digest}"


class EmbeddingCache:
    def __init__(self, redis: Redis, *, prefix: str, ttl_seconds: int, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._bypass_until = 0.0

    async def get_many(self, keys: list[str], dims: int) -> list[np.ndarray | None]:
        """Vectors for `item_key`s (None where there is none); the prefix is added here."""
        if not keys or self._bypassed():
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self._timeout):
                values = await self._redis.mget([self._prefix + key for key in keys])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("read", exc)
            return [None] * len(keys)
        width = dims * FLOAT32_LE.itemsize
        return [
            np.frombuffer(value, dtype=FLOAT32_LE) if value and len(value) == width else None
            for value in values
        ]

    async def set_many(self, entries: dict[str, np.ndarray]) -> None:
        if not entries or self._bypassed():
            return
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, vector in entries.items():
                        value = np.ascontiguousarray(vector, FLOAT32_LE).tobytes()
                        pipe.set(self._prefix + key, value, ex=self._ttl)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("write", exc)

    def _bypassed(self) -> bool:
        return time.monotonic() < self._bypass_until

    def _failed(self, what: str, exc: BaseException) -> None:
        metrics.REDIS_ERRORS.labels("cache").inc()
        if not self._bypassed():
            log.warning(
                "embedding cache %s failed (%s); bypassing it for now", what, type(exc).__name__
            )
        self._bypass_until = time.monotonic() + BYPASS_SECONDS
