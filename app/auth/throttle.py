"""Failed authentications per client IP, limited far below the request rate: key guessing.

Each failure is counted with the rate limiter's sliding log (in Redis when REDIS_URL is set, so
every worker and replica shares the count; else in process) over a one-minute window. The IP
that uses up its allowance is blocked until its oldest failure leaves the window: every request
it makes meanwhile gets a 429 before its key is even compared, so a guess that happens to be
right cannot be told from a wrong one. Successful requests never touch Redis here; the block is
a dictionary lookup. Each process learns of a block from its own next failure, so with several
processes an IP gets at most one more failed try per process per window.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from app.errors import TooManyFailedAuthentications
from app.state.rate_limits import RateLimiter

WINDOW_SECONDS = 60.0
MAX_BLOCKED = 100_000  # blocked IPs remembered at once; the oldest block is forgotten first


class AuthFailureThrottle:
    def __init__(self, limiter: RateLimiter, *, clock: Callable[[], float] = time.monotonic):
        self.limit = limiter.limit
        self._limiter = limiter
        self._clock = clock
        self._blocked: OrderedDict[str, float] = OrderedDict()  # ip -> blocked until

    def check(self, ip: str) -> None:
        """Raise TooManyFailedAuthentications (a 429) while `ip` is blocked."""
        until = self._blocked.get(ip)
        if until is None:
            return
        left = until - self._clock()
        if left <= 0:
            del self._blocked[ip]
            return
        raise self._error(left)

    async def failed(self, ip: str) -> None:
        """Count one failed authentication; raise TooManyFailedAuthentications if it was one
        too many."""
        decision = await self._limiter.check(ip)
        if decision.allowed and decision.remaining > 0:
            return
        self._block(ip, decision.reset)
        if not decision.allowed:
            raise self._error(decision.retry_after)

    def _block(self, ip: str, seconds: float) -> None:
        self._blocked.pop(ip, None)
        self._blocked[ip] = self._clock() + seconds
        while len(self._blocked) > MAX_BLOCKED:
            self._blocked.popitem(last=False)

    def _error(self, retry_after: float) -> TooManyFailedAuthentications:
        return TooManyFailedAuthentications(self.limit, retry_after)

    async def aclose(self) -> None:
        await self._limiter.aclose()
