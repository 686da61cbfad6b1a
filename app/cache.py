"""Per-input embedding cache in Redis: each item's vector and token count (app/cache_value.py)
under a key naming model, width and input.

Keys are `{CACHE_KEY_PREFIX}{model}:{fingerprint}:{dims}:[{input_type}:]{sha256 of the input}`:
the fingerprint changes with the model's registry entry, and the prefix can be bumped by hand,
so stale vectors are never served. Reads are one MGET (per hash slot in a Cluster), answered
first from the vectors still waiting to be written.

Writes are off the request's path: `put` queues vectors in process (at most `max_pending`; past
it new ones are simply not cached) and one background task writes what has queued, in
pipelined batches of SET EX (per node in a Cluster), one batch after another; `flush`, at
shutdown, writes everything left. Redis trouble never fails a request: the cache is bypassed
(and skipped for a second, so a hung Redis costs one timeout per second, not one per request),
and a batch that fails is dropped: a cache only loses hits, never answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping

import numpy as np

from app import metrics
from app.cache_value import CacheEntry, decode, encode
from app.redis_client import REDIS_FAILURES, RedisClient, mget
from app.registry import Model

log = logging.getLogger("app.cache")

BYPASS_SECONDS = 1.0
WRITE_BATCH = 256  # SETs per pipeline: a batch of wide vectors stays well inside the timeout


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
    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        ttl_seconds: int,
        timeout: float,
        max_pending: int = 10_000,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._bypass_until = 0.0
        self._max_pending = max_pending
        self._pending: dict[str, CacheEntry] = {}  # queued for the next write
        self._writing: dict[str, CacheEntry] = {}  # the batch on its way to Redis
        self._writer: asyncio.Task[None] | None = None

    async def get_many(self, keys: list[str], dims: int) -> list[CacheEntry | None]:
        """Items for `item_key`s (None where there is none); the prefix is added here."""
        found: list[CacheEntry | None] = [self._queued(key) for key in keys]
        unknown = [i for i, item in enumerate(found) if item is None]
        if not unknown or self._bypassed():
            return found
        try:
            async with asyncio.timeout(self._timeout):
                values = await mget(self._redis, [self._prefix + keys[i] for i in unknown])
        except REDIS_FAILURES as exc:
            self._failed("read", exc)
            return found
        for i, value in zip(unknown, values, strict=True):
            found[i] = decode(value, dims)
        return found

    async def put(self, entries: Mapping[str, CacheEntry]) -> None:
        """Cache `entries` soon, without waiting for Redis (at once when queueing is off)."""
        if not entries or self._bypassed():
            return
        if self._max_pending == 0:
            await self.set_many(entries)
            return
        room = self._max_pending - len(self._pending)
        for key, item in entries.items():
            if room <= 0:
                metrics.CACHE_WRITES_DROPPED.inc()
                continue
            if key not in self._pending:
                room -= 1
            self._pending[key] = item
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def flush(self) -> None:
        """Write everything queued (at shutdown): nothing accepted by `put` is left behind."""
        while self._writer is not None or self._pending:
            if self._writer is None:
                self._writer = asyncio.get_running_loop().create_task(self._write_queued())
            await asyncio.shield(self._writer)

    async def _write_queued(self) -> None:
        try:
            while self._pending:
                self._writing, self._pending = self._pending, {}
                entries = list(self._writing.items())
                for start in range(0, len(entries), WRITE_BATCH):
                    await self.set_many(dict(entries[start : start + WRITE_BATCH]))
                self._writing = {}
        finally:
            self._writing = {}
            self._writer = None

    def _queued(self, key: str) -> CacheEntry | None:
        item = self._pending.get(key)
        return item if item is not None else self._writing.get(key)

    async def set_many(self, entries: Mapping[str, CacheEntry]) -> None:
        if not entries or self._bypassed():
            return
        try:
            async with asyncio.timeout(self._timeout):
                # A Cluster's pipeline sends each node its own keys, in parallel.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, item in entries.items():
                        pipe.set(self._prefix + key, encode(item), ex=self._ttl)
                    await pipe.execute()
        except REDIS_FAILURES as exc:
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
