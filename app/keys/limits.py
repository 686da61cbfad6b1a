"""Per-key limits in process: requests per second and input tokens per minute.

Requests per second are the per-IP sliding log (`app.ratelimit`), one limiter per distinct
limit value. Tokens per minute are a sliding log too, weighted: each admitted request is an
entry carrying its token count, and a request is admitted while the tokens of the last 60 s
plus its own fit the limit. So no 60-second span ever admits more than the limit, whatever the
burst shape. With Redis the same two logs are kept there, by the one script that checks a
key's whole policy (`app.keys.checks`); these are for no Redis, or while it fails.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from app.state.rate_limits import Clock, Decision, LocalRateLimiter

TOKEN_WINDOW_SECONDS = 60.0


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


class LocalKeyLimits:
    """Every per-key limit, counted in this process: without Redis, or while it fails."""

    def __init__(self) -> None:
        self._requests: dict[int, LocalRateLimiter] = {}  # one per distinct limit value
        self._tokens = LocalTokenLimiter()

    def check_requests(self, key_id: str, limit: int) -> Decision:
        limiter = self._requests.get(limit)
        if limiter is None:
            limiter = self._requests[limit] = LocalRateLimiter(limit)
        return limiter.hit(key_id)

    def check_tokens(self, key_id: str, limit: int, tokens: int) -> TokenDecision:
        return self._tokens.hit(key_id, limit, tokens)
