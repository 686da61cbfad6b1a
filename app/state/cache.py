"""Per-input embedding cache in Redis: each item's vector and token count under a key naming
model, width and input.

Keys are `{CACHE_KEY_PREFIX}{model}:{fingerprint}:{dims}:[{input_type}:]{sha256 of the input}`:
the fingerprint changes with the model's registry entry, and the prefix can be bumped by hand,
so stale vectors are never served. Reads are one MGET (per hash slot in a Cluster), answered
first from the vectors still waiting to be written; concurrent requests' reads share an MGET
while one is on its way.

Writes are off the request's path: `put` queues vectors in process (at most `max_pending`; past
it new ones are simply not cached) and one background task writes what has queued, in
batches of SET EX — one script call per batch, or a pipeline per node in a Cluster (one
script per key there would cost more) — one batch after another; `flush`, at
shutdown, writes everything left. Redis trouble never fails a request: the cache is bypassed
(and skipped for a second, so a hung Redis costs one timeout per second, not one per request),
and a batch that fails is dropped: a cache only loses hits, never answers.

Each value is the vector's little-endian float32 bytes followed by a little-endian uint32: the
item's share of the usage its upstream call reported, so a hit reports what its miss did.
Without the count (entries written before it existed, or when the upstream reported no usage)
the value is the bare vector and the gateway's own count applies. The key names the width, so
the length alone tells the two apart: nothing to bump, and no cached vector is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import numpy as np

from app import metrics
from app.config.registry import Model
from app.encoding import FLOAT32_LE
from app.state.redis_client import REDIS_FAILURES, RedisClient, is_cluster, mget

log = logging.getLogger("app.cache")

BYPASS_SECONDS = 1.0
WRITE_BATCH = 256  # SETs per batch: a batch of wide vectors stays well inside the timeout
WRITE_LINGER_SECONDS = 0.005
# One call per batch: in redis-py a pipeline costs ~15 µs of client CPU per SET, this ~3 µs.
SET_ALL = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""

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
        # A Cluster spreads keys over slots, where one script per key would cost more than a
        # pipeline; elsewhere one script call writes a whole batch.
        self._set_script = None if is_cluster(redis) else redis.register_script(SET_ALL)
        self._reading = False  # an MGET is on its way
        self._reads: list[tuple[list[str], asyncio.Future[list[bytes | None] | None]]] = []
        self._readers: set[asyncio.Task[None]] = set()

    async def get_many(self, keys: list[str], dims: int) -> list[CacheEntry | None]:
        """Items for `item_key`s (None where there is none); the prefix is added here."""
        found: list[CacheEntry | None] = [self._queued(key) for key in keys]
        unknown = [i for i, item in enumerate(found) if item is None]
        if not unknown or self._bypassed():
            return found
        values = await self._read([self._prefix + keys[i] for i in unknown])
        if values is None:
            return found
        for i, value in zip(unknown, values, strict=True):
            found[i] = decode(value, dims)
        return found

    async def _read(self, keys: list[str]) -> list[bytes | None] | None:
        """Values for prefixed keys, or None when Redis failed. A read made while no MGET is on
        its way goes at once, alone; reads made while one is go together in the next MGET. At
        rest that is one round trip per request; under load one serves many requests, which
        saves most of the client's per-command CPU (as the rate limiter does)."""
        if self._reading:
            answer: asyncio.Future[list[bytes | None] | None]
            answer = asyncio.get_running_loop().create_future()
            self._reads.append((keys, answer))
            return await answer
        self._reading = True
        try:
            return await self._mget(keys)
        finally:
            self._send_queued_reads()

    def _send_queued_reads(self) -> None:
        queued, self._reads = self._reads, []
        if not queued:
            self._reading = False
            return
        if self._bypassed():  # Redis just failed: no second timeout for these
            self._reading = False
            for _, answer in queued:
                if not answer.done():
                    answer.set_result(None)
            return
        reader = asyncio.get_running_loop().create_task(self._read_for(queued))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)

    async def _read_for(
        self, queued: list[tuple[list[str], asyncio.Future[list[bytes | None] | None]]]
    ) -> None:
        values: list[bytes | None] | None = None
        try:
            values = await self._mget([key for keys, _ in queued for key in keys])
        finally:
            start = 0
            for keys, answer in queued:
                end = start + len(keys)
                if not answer.done():  # its request may have gone away meanwhile
                    answer.set_result(None if values is None else values[start:end])
                start = end
            self._send_queued_reads()

    async def _mget(self, keys: list[str]) -> list[bytes | None] | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await mget(self._redis, keys)
        except REDIS_FAILURES as exc:
            self._failed("read", exc)
            return None

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
                if len(self._pending) < WRITE_BATCH:
                    # Let a few more requests' vectors join: fewer, fuller writes. Queued
                    # vectors answer this process's lookups meanwhile.
                    await asyncio.sleep(WRITE_LINGER_SECONDS)
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
                if self._set_script is not None:
                    keys = [self._prefix + key for key in entries]
                    values = [encode(item) for item in entries.values()]
                    await self._set_script(keys=keys, args=[self._ttl, *values])
                    return
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
