"""The console's last hour of embeddings traffic, per model, per minute, in this process.

/metrics has counters and histograms since start-up, not a history, and the console must work
without a Prometheus. So each worker keeps 60 one-minute buckets per model: requests, errors
(status >= 500, and 429s, which a client sees as failures too) and a fixed log-scale latency
histogram, from which p50 and p99 are read. Memory is bounded: models come from the registry
(unknown IDs share one label, as in the metrics), buckets older than an hour are dropped.

Per worker, not aggregated: with WORKERS > 1 a page shows the traffic of the worker that served
it (the page says which); Prometheus and the Grafana dashboard give the sum.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.record import record

BUCKET_SECONDS = 60
BUCKETS = 60
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
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: dict[int, dict[str, _Minute]] = {}

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
        bucket.requests += 1
        if status >= 500 or status == 429:
            bucket.errors += 1
        bucket.latency[bisect.bisect_left(LATENCY_EDGES, seconds)] += 1

    def last_hour(self) -> list[Series]:
        now = int(self._clock() // BUCKET_SECONDS)
        minutes = list(range(now - BUCKETS + 1, now + 1))
        models = sorted({m for minute in minutes for m in self._minutes.get(minute, {})})
        out = []
        for model in models:
            buckets = [self._minutes.get(minute, {}).get(model) for minute in minutes]
            out.append(
                Series(
                    model=model,
                    minutes=[m * BUCKET_SECONDS for m in minutes],
                    requests_per_second=[
                        b.requests / BUCKET_SECONDS if b else 0.0 for b in buckets
                    ],
                    error_rate=[b.errors / b.requests if b else None for b in buckets],
                    p50_ms=[_quantile(b, 0.5) if b else None for b in buckets],
                    p99_ms=[_quantile(b, 0.99) if b else None for b in buckets],
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
    `send` and a dictionary update per request (about a microsecond).
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
            model = record(scope).model or "none"
            self.stats.observe(model, status, time.perf_counter() - began)
