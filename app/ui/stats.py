"""The console's last hour of embeddings traffic, per model, per minute.

/metrics has counters and histograms since start-up, not a history, and the console must work
without a Prometheus. So each worker keeps 60 one-minute buckets per model: requests, errors
(status >= 500, and 429s, which a client sees as failures too) and a fixed log-scale latency
histogram, from which p50 and p99 are read. Memory is bounded: models come from the registry
(unknown IDs share one label, as in the metrics), buckets older than an hour are dropped.

With Redis, every worker and replica also adds its counts to one hash per minute
(`{prefix}{minute}`, fields `{model}<TAB>{r|e|h<bucket>}`, kept two hours), at most
FLUSH_SECONDS after a request, in one pipeline; the Overview reads the sum of them all. If
Redis does not answer, the page falls back to this worker's own counts and says so.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.context import request_context
from app.state.redis_client import REDIS_FAILURES, RedisClient

log = logging.getLogger("app.ui")

BUCKET_SECONDS = 60
BUCKETS = 60
FLUSH_SECONDS = 2.0
RETENTION_SECONDS = 2 * 3600
# 1 ms to ~2 min in steps of ~19 %: a percentile read from here is within that of the truth.
LATENCY_EDGES = [0.001 * 1.19**i for i in range(68)]


@dataclass(slots=True)
class _Minute:
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES) + 1))


@dataclass(slots=True)
class Series:
    """One model's last hour, oldest minute first; None where a minute had no requests."""

    model: str
    minutes: list[int]  # each minute's start, Unix seconds
    requests_per_second: list[float]
    error_rate: list[float | None]
    p50_ms: list[float | None]
    p99_ms: list[float | None]

    @property
    def total_requests(self) -> int:
        return round(sum(self.requests_per_second) * BUCKET_SECONDS)


class RollingStats:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        redis: Callable[[], RedisClient | None] | None = None,
        prefix: str = "egw:console:stats:",
        timeout: float = 0.25,
    ) -> None:
        self._clock = clock
        self._minutes: dict[int, dict[str, _Minute]] = {}
        self._redis = redis  # a getter: the client exists only once the gateway has started
        self._prefix = prefix
        self._timeout = timeout
        # Counts not yet added to Redis: (minute, model) -> field -> count.
        self._pending: dict[tuple[int, str], dict[str, int]] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def shared(self) -> bool:
        return self._redis is not None and self._redis() is not None

    def observe(self, model: str, status: int, seconds: float) -> None:
        minute = int(self._clock() // BUCKET_SECONDS)
        models = self._minutes.get(minute)
        if models is None:
            models = self._minutes[minute] = {}
            for old in [m for m in self._minutes if m <= minute - BUCKETS]:
                del self._minutes[old]
        bucket = models.get(model)
        if bucket is None:
            bucket = models[model] = _Minute()
        error = status >= 500 or status == 429
        slot = bisect.bisect_left(LATENCY_EDGES, seconds)
        bucket.requests += 1
        bucket.errors += error
        bucket.latency[slot] += 1
        if self._redis is not None:
            counts = self._pending.setdefault((minute, model), defaultdict(int))
            counts["r"] += 1
            counts["e"] += error
            counts[f"h{slot}"] += 1
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        loop = asyncio.get_running_loop()
        loop.call_later(FLUSH_SECONDS, self._start_flush)

    def _start_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Add the pending counts to Redis; on failure they are dropped (these are statistics,
        and the worker's own view still has them)."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        redis = self._redis() if self._redis is not None else None
        if not pending or redis is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                async with redis.pipeline(transaction=False) as pipe:
                    for (minute, model), counts in pending.items():
                        key = f"{self._prefix}{minute}"
                        for name, count in counts.items():
                            if count:
                                pipe.hincrby(key, f"{model}\t{name}", count)
                        pipe.expire(key, RETENTION_SECONDS)
                    await pipe.execute()
        except REDIS_FAILURES as exc:
            log.warning("console statistics not shared through Redis (%s)", type(exc).__name__)

    def last_hour(self) -> list[Series]:
        """This worker's own view."""
        return _series(self._minutes, int(self._clock() // BUCKET_SECONDS))

    async def last_hour_everywhere(self) -> tuple[list[Series], bool]:
        """Every worker's and replica's sum through Redis, and True; or, without Redis (or
        when it does not answer), this worker's own view and False."""
        redis = self._redis() if self._redis is not None else None
        if redis is None:
            return self.last_hour(), False
        await self.flush()
        now = int(self._clock() // BUCKET_SECONDS)
        minutes = list(range(now - BUCKETS + 1, now + 1))
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                async with redis.pipeline(transaction=False) as pipe:
                    for minute in minutes:
                        pipe.hgetall(f"{self._prefix}{minute}")
                    answers = await pipe.execute()
        except REDIS_FAILURES as exc:
            log.warning("console statistics not read from Redis (%s)", type(exc).__name__)
            return self.last_hour(), False
        merged: dict[int, dict[str, _Minute]] = {}
        for minute, fields in zip(minutes, answers, strict=True):
            for raw_field, raw_count in fields.items():
                model, _, name = _text(raw_field).partition("\t")
                bucket = merged.setdefault(minute, {}).setdefault(model, _Minute())
                count = int(raw_count)
                if name == "r":
                    bucket.requests += count
                elif name == "e":
                    bucket.errors += count
                elif name.startswith("h") and name[1:].isdigit():
                    slot = int(name[1:])
                    if slot < len(bucket.latency):
                        bucket.latency[slot] += count
        return _series(merged, now), True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _series(by_minute: dict[int, dict[str, _Minute]], now: int) -> list[Series]:
    minutes = list(range(now - BUCKETS + 1, now + 1))
    models = sorted({m for minute in minutes for m in by_minute.get(minute, {})})
    out = []
    for model in models:
        buckets = [by_minute.get(minute, {}).get(model) for minute in minutes]
        out.append(
            Series(
                model=model,
                minutes=[m * BUCKET_SECONDS for m in minutes],
                requests_per_second=[b.requests / BUCKET_SECONDS if b else 0.0 for b in buckets],
                error_rate=[b.errors / b.requests if b and b.requests else None for b in buckets],
                p50_ms=[_quantile(b, 0.5) if b and b.requests else None for b in buckets],
                p99_ms=[_quantile(b, 0.99) if b and b.requests else None for b in buckets],
            )
        )
    return out


def _quantile(bucket: _Minute, q: float) -> float:
    """The upper edge of the histogram bucket holding the q-th request, in ms."""
    rank = max(1, math.ceil(q * bucket.requests))
    seen = 0
    for index, count in enumerate(bucket.latency):
        seen += count
        if seen >= rank:
            edge = LATENCY_EDGES[min(index, len(LATENCY_EDGES) - 1)]
            return round(edge * 1000, 2)
    return round(LATENCY_EDGES[-1] * 1000, 2)


class RecordEmbeddings:
    """Pure ASGI, outermost: times POST .../embeddings and notes its model and status.

    Only installed with the console. Its cost on the hot path is one path comparison, a wrapped
    `send` and a few dictionary updates per request (10-15 us measured on a loaded 2-core
    machine, against ~0.8 ms of CPU per request); Redis is written at most once per
    FLUSH_SECONDS per worker, off the request path.
    """

    def __init__(self, app: ASGIApp, stats: RollingStats, paths: frozenset[str]) -> None:
        self.app = app
        self.stats = stats
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            model = request_context(scope).model or "none"
            self.stats.observe(model, status, time.perf_counter() - began)
