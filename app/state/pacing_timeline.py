"""The pacing timeline in Redis, shared by every worker and replica (app/core/routing/pacing.py).

One Lua script per call: it reads Redis's own clock (so replicas' clocks never disagree),
reserves the provider's next free slot unless it is further away than the caller may wait,
and notes this process in a set of those that paced the provider lately, whose size is each
process's share should Redis become unreachable. A provider's two keys share a hash tag, so
the script is Cluster-safe. Redis trouble returns None (the caller paces locally) and skips
Redis for a second, so a hung Redis costs one timeout per second, not one per call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time

from app import metrics
from app.state.redis_client import REDIS_FAILURES, RedisClient

log = logging.getLogger("app.pacing")

BYPASS_SECONDS = 1.0
# A process that paced no call for this long no longer counts towards the shares.
PROCESS_WINDOW_SECONDS = 10.0

# Times are integer microseconds, written with %.0f: Lua's default number format keeps only 14
# digits, too few for microseconds since the epoch.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local window = tonumber(ARGV[4])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
if slot - now <= most then
  local after = slot + interval
  redis.call('SET', KEYS[1], string.format('%.0f', after),
             'PX', math.ceil((after - now) / 1000) + 1000)
end
redis.call('ZADD', KEYS[2], string.format('%.0f', now), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - window))
redis.call('PEXPIRE', KEYS[2], math.ceil(window / 1000))
return {string.format('%.0f', slot - now), redis.call('ZCARD', KEYS[2])}
"""


class RedisTimeline:
    def __init__(self, redis: RedisClient, *, key_prefix: str, timeout: float) -> None:
        self._redis = redis
        self._script = redis.register_script(RESERVE)
        self._prefix = key_prefix
        self._timeout = timeout
        self._me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._bypass_until = 0.0

    async def reserve(
        self, provider: str, interval: float, most: float
    ) -> tuple[float, int] | None:
        if time.monotonic() < self._bypass_until:
            return None
        tag = f"{self._prefix}{{pace:{provider}}}"
        args: list[str | int] = [
            round(interval * 1e6),
            round(max(0.0, most) * 1e6),
            self._me,
            round(PROCESS_WINDOW_SECONDS * 1e6),
        ]
        try:
            async with asyncio.timeout(self._timeout):
                wait, processes = await self._script(keys=[f"{tag}:next", f"{tag}:who"], args=args)
        except REDIS_FAILURES as exc:
            metrics.REDIS_ERRORS.labels("pacing").inc()
            if time.monotonic() >= self._bypass_until:
                log.warning(
                    "pacing through Redis failed (%s); pacing %s in process for now",
                    type(exc).__name__,
                    provider,
                )
            self._bypass_until = time.monotonic() + BYPASS_SECONDS
            return None
        return int(wait) / 1e6, int(processes)
