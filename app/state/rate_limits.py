"""Requests per client per second, counted in Redis or, without it, in this process.

The Redis script and the in-process fallback are one algorithm that must count alike, so
they live together here.

The algorithm is a sliding log over a 1-second window: each admitted request is a timestamp, and
a request is admitted while fewer than `limit` timestamps are younger than one second. It is
exact (no 1-second span ever holds more than `limit` admissions, whatever the burst shape),
which a token bucket or GCRA is not: with a burst of one second's worth they admit the burst
plus the steady rate, 4 x limit in 3 s of overload where 3 x limit is the promise. Its cost,
at most `limit` entries per active client, is small for a per-second limit. Denied requests
are not logged, so a client that keeps over-asking still gets exactly `limit` per second.

Redis holds the log as a sorted set per client, touched by one Lua script per request: one
round trip, atomic across every worker and gateway, timed by Redis's own clock. Each client's
log is one key, so the script is Cluster-safe; batched checks go as one call per hash slot.
The `limits` library implements the same moving window, but needs a second round trip for
remaining/reset, so this small script is the cheaper choice. When Redis fails or is slow, the
same algorithm runs in-process (limits become per process) until Redis answers a probe again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from app import metrics
from app.config.report import redacted
from app.state.coalescing import Coalescer
from app.state.redis_client import REDIS_FAILURES, RedisClient, connect

log = logging.getLogger("app.ratelimit")

WINDOW_SECONDS = 1.0
PROBE_INTERVAL_SECONDS = 1.0
START_TIMEOUT_SECONDS = 2.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the oldest counted request leaves the window
    retry_after: float  # seconds until a denied request could be admitted; 0 when allowed


class RateLimiter(ABC):
    """A per-bucket limit of `limit` requests in any window (1 second unless told otherwise)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1; a limit of 0 means no limiter")
        self.limit = limit

    @abstractmethod
    async def start(self) -> None:
        """Connect and log how limits are counted; the gateway calls this once at start-up."""

    @abstractmethod
    async def check(self, bucket: str) -> Decision:
        """Count one request against `bucket` if it fits, and say whether it did."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections."""

    def _decision(self, admitted: bool, count: int, reset: float) -> Decision:
        reset = max(reset, 0.0)
        return Decision(admitted, self.limit, self.limit - count, reset, 0.0 if admitted else reset)


class LocalRateLimiter(RateLimiter):
    """The sliding log in this process's memory; exact, but each process counts on its own."""

    def __init__(
        self, limit: int, *, window: float = WINDOW_SECONDS, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(limit)
        self._window = window
        self._clock = clock
        # Least recently checked first, so idle buckets are dropped from the front in O(1).
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def buckets(self) -> int:
        return len(self._hits)

    async def start(self) -> None:
        """Nothing to connect to."""

    async def check(self, bucket: str) -> Decision:
        return self.hit(bucket)

    async def aclose(self) -> None:
        """Nothing to release."""

    def hit(self, bucket: str) -> Decision:
        now = self._clock()
        horizon = now - self._window
        self._drop_idle(horizon)
        hits = self._hits.get(bucket)
        if hits is None:
            hits = self._hits[bucket] = deque()
        else:
            self._hits.move_to_end(bucket)
            while hits and hits[0] <= horizon:
                hits.popleft()
        admitted = len(hits) < self.limit
        if admitted:
            hits.append(now)
        return self._decision(admitted, len(hits), hits[0] + self._window - now)

    def _drop_idle(self, horizon: float) -> None:
        while self._hits:
            hits = next(iter(self._hits.values()))
            if hits and hits[-1] > horizon:
                return
            self._hits.popitem(last=False)


# KEYS: one bucket per check (a bucket may repeat). ARGV: limit, window (µs), then one member
# per check, unique to its request, so simultaneous requests are all counted. Checks are applied
# in order, exactly as if each were its own call. Redis's TIME, not each gateway's clock, so
# gateways whose clocks disagree still agree on the window; a write after TIME is fine under
# effects replication (the only mode since Redis 7). Microseconds since the epoch (~1.8e15)
# are exact in a double, so scores never collide by rounding.
SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local admitted = 0
  if count < limit then
    redis.call('ZADD', key, now, ARGV[2 + i])
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    count = count + 1
    admitted = 1
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local reset = 0
  if oldest[2] then
    reset = tonumber(oldest[2]) + window - now
  end
  out[#out + 1] = admitted
  out[#out + 1] = count
  out[#out + 1] = reset
end
return out
"""

Counted = tuple[int, int, int]  # admitted (0/1), count in the window, µs until the oldest leaves


class RedisRateLimiter(RateLimiter):
    """The sliding log in Redis, shared by every worker and gateway using the same prefix.

    One script call counts every check that is waiting for it (`app.redis_coalesce`): alone
    at rest, many together under load, applied in order, so still exact.

    On any Redis error or timeout the checks are counted by an in-process `LocalRateLimiter`
    instead, one warning marks the outage, and at most one request per `probe_interval` tries
    Redis again; the first that succeeds ends the outage.
    """

    def __init__(
        self,
        url: str,
        limit: int,
        *,
        key_prefix: str,
        timeout: float,
        probe_interval: float = PROBE_INTERVAL_SECONDS,
        clock: Clock = time.monotonic,
        client: RedisClient | None = None,
        window: float = WINDOW_SECONDS,
    ) -> None:
        super().__init__(limit)
        self.url = url
        self._prefix = key_prefix
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._clock = clock
        self._owns_client = client is None
        self._redis: RedisClient = client if client is not None else connect(url, timeout)
        self._script = self._redis.register_script(SLIDING_LOG)
        self._window_us = round(window * 1_000_000)
        self._members = itertools.count()
        self._member_prefix = uuid.uuid4().hex[:16] + ":"
        self.fallback = LocalRateLimiter(limit, window=window, clock=clock)
        self._down = False
        self._next_probe = 0.0
        # Each check is (its client's key, its member); each client's log is one key.
        self._count: Coalescer[tuple[str, str], Counted] = Coalescer(
            self._redis, self._call, lambda check: check[0], failed=lambda: self._down
        )

    @property
    def using_redis(self) -> bool:
        return not self._down

    async def start(self) -> None:
        try:
            # Longer than a request's bound: the first call also connects, and a Cluster client
            # first learns the slot map and loads the script on every master.
            async with asyncio.timeout(max(self._timeout, START_TIMEOUT_SECONDS)):
                await self._redis.script_load(SLIDING_LOG)
        except REDIS_FAILURES as exc:
            self._went_down(exc, at_start=True)
        else:
            log.info("rate limits are counted in Redis at %s", redacted(self.url))

    async def check(self, bucket: str) -> Decision:
        probing = self._down
        if probing:
            now = self._clock()
            if now < self._next_probe:
                return self.fallback.hit(bucket)
            self._next_probe = now + self._probe_interval  # the other requests stay local
        member = f"{self._member_prefix}{next(self._members)}"
        counted = await self._count((self._prefix + bucket, member))
        if counted is None:  # Redis failed this call: it is now marked down
            return self.fallback.hit(bucket)
        if probing and self._down:
            self._down = False
            log.info("Redis at %s answers again; rate limits are shared again", redacted(self.url))
        admitted, count, reset_us = counted
        return self._decision(bool(admitted), int(count), int(reset_us) / 1_000_000)

    async def aclose(self) -> None:
        self._count.cancel()
        if self._owns_client:
            await self._redis.aclose()

    async def _call(self, checks: list[tuple[str, str]]) -> list[Counted] | None:
        """The script's answers, in order; None when Redis failed (it is then marked down)."""
        keys = [key for key, _ in checks]
        members = [member for _, member in checks]
        try:
            async with asyncio.timeout(self._timeout):
                flat = await self._script(keys=keys, args=[self.limit, self._window_us, *members])
        except REDIS_FAILURES as exc:
            metrics.REDIS_ERRORS.labels("ratelimit").inc()
            self._went_down(exc)
            return None
        return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    def _went_down(self, exc: BaseException, *, at_start: bool = False) -> None:
        if self._down:
            return
        self._down = True
        self._next_probe = self._clock() + self._probe_interval
        log.warning(
            "Redis at %s unreachable%s (%s); rate limits are per process until it answers",
            redacted(self.url),
            " at start-up" if at_start else "",
            _describe(exc),
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
