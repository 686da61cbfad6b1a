"""Per-key limits: requests per second and input tokens per minute, counted across replicas.

Requests per second reuse the per-IP sliding log (`app.ratelimit`), one limiter per distinct
limit value, under their own key prefix. Tokens per minute are a sliding log too, weighted:
each admitted request is an entry carrying its token count, and a request is admitted while
the tokens of the last 60 s plus its own fit the limit. So no 60-second span ever admits more
than the limit, whatever the burst shape. In Redis one script per request checks and counts,
timed by Redis's clock; without Redis (or while it fails) the same log runs in process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

from app import metrics
from app.ratelimit import Clock, Decision, LocalRateLimiter, RateLimiter, RedisRateLimiter
from app.redis_client import REDIS_FAILURES, RedisClient

log = logging.getLogger("app.keys")

TOKEN_WINDOW_SECONDS = 60.0
OUTAGE_SECONDS = 1.0

# KEYS: the log (a sorted set of `member:tokens` scored by µs), its running sum. ARGV: limit,
# window (µs), tokens, a unique member. Returns admitted, tokens in the window, µs until the
# oldest entry leaves, µs until this request would fit (-1: never, it exceeds the limit).
TOKEN_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  for _, m in ipairs(old) do
    used = used - tonumber(string.match(m, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  used = 0
end
local admitted = 0
if used + tokens <= limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. ARGV[3])
  used = used + tokens
  admitted = 1
end
local ttl = math.ceil(window / 1000)
redis.call('SET', KEYS[2], used, 'PX', ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
local reset = 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
local wait = 0
if admitted == 0 then
  wait = -1
  if tokens <= limit then
    local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    local freed = 0
    for i = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[i], ':(%d+)$'))
      if used - freed + tokens <= limit then
        wait = tonumber(entries[i + 1]) + window - now
        break
      end
    end
  end
end
return {admitted, used, reset, wait}
"""


@dataclass(frozen=True, slots=True)
class TokenDecision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the oldest counted request leaves the window
    retry_after: float | None  # seconds until this request would fit; None: it never will


class LocalTokenLimiter:
    """The weighted sliding log in this process: exact, but each process counts on its own."""

    def __init__(self, *, window: float = TOKEN_WINDOW_SECONDS, clock: Clock = time.monotonic):
        self._window = window
        self._clock = clock
        self._logs: dict[str, tuple[deque[tuple[float, int]], list[int]]] = {}

    def hit(self, bucket: str, limit: int, tokens: int) -> TokenDecision:
        now = self._clock()
        entries, used = self._logs.setdefault(bucket, (deque(), [0]))
        while entries and entries[0][0] <= now - self._window:
            used[0] -= entries.popleft()[1]
        admitted = used[0] + tokens <= limit
        if admitted:
            entries.append((now, tokens))
            used[0] += tokens
        reset = entries[0][0] + self._window - now if entries else 0.0
        wait: float | None = 0.0
        if not admitted:
            wait = None
            freed = 0
            for at, count in entries if tokens <= limit else ():
                freed += count
                if used[0] - freed + tokens <= limit:
                    wait = at + self._window - now
                    break
        return TokenDecision(admitted, limit, max(0, limit - used[0]), max(reset, 0.0), wait)


class KeyLimits:
    """Every per-key limit of one process; shared through Redis when it is given one."""

    def __init__(
        self, redis: RedisClient | None, *, url: str | None, prefix: str, timeout: float
    ) -> None:
        self._redis = redis
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._request_limiters: dict[int, RateLimiter] = {}
        self._tokens_local = LocalTokenLimiter()
        self._token_script = redis.register_script(TOKEN_LOG) if redis is not None else None
        self._members = itertools.count()
        self._member_prefix = uuid.uuid4().hex[:12]
        self._down_until = 0.0

    async def check_requests(self, key_id: str, limit: int) -> Decision:
        limiter = self._request_limiters.get(limit)
        if limiter is None:
            if self._redis is None or self._url is None:
                limiter = LocalRateLimiter(limit)
            else:
                limiter = RedisRateLimiter(
                    self._url,
                    limit,
                    key_prefix=self._prefix + "rps:",
                    timeout=self._timeout,
                    client=self._redis,
                )
            self._request_limiters[limit] = limiter
        return await limiter.check(key_id)

    async def check_tokens(self, key_id: str, limit: int, tokens: int) -> TokenDecision:
        script = self._token_script
        if script is None or time.monotonic() < self._down_until:
            return self._tokens_local.hit(key_id, limit, tokens)
        key = f"{self._prefix}tpm:{{{key_id}}}"  # the log and its sum share a Cluster slot
        member = f"{self._member_prefix}{next(self._members)}"
        try:
            async with asyncio.timeout(self._timeout):
                admitted, used, reset_us, wait_us = await script(
                    keys=[key, key + ":sum"],
                    args=[limit, round(TOKEN_WINDOW_SECONDS * 1_000_000), tokens, member],
                )
        except REDIS_FAILURES as exc:
            metrics.REDIS_ERRORS.labels("ratelimit").inc()
            if self._down_until == 0.0 or time.monotonic() >= self._down_until + OUTAGE_SECONDS:
                log.warning("per-key token limits counted in process (%s)", type(exc).__name__)
            self._down_until = time.monotonic() + OUTAGE_SECONDS
            return self._tokens_local.hit(key_id, limit, tokens)
        wait = None if int(wait_us) < 0 else int(wait_us) / 1_000_000
        return TokenDecision(
            bool(admitted), limit, max(0, limit - int(used)), int(reset_us) / 1_000_000, wait
        )

    async def aclose(self) -> None:
        for limiter in self._request_limiters.values():
            await limiter.aclose()
