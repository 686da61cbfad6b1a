"""The limit step every API handler takes right after authentication, before reading the body."""

from __future__ import annotations

import math

from starlette.types import Scope

from app import metrics
from app.api.auth import Caller
from app.api.middleware import extra_headers
from app.api.record import record
from app.clientip import client_ip
from app.errors import RATE_LIMIT, GatewayError
from app.gateway import Gateway


async def admit(scope: Scope, gateway: Gateway, caller: Caller) -> None:
    """Count the request against its client IP; raise a 429 when the IP is over its limit.

    The x-ratelimit-* headers go into the middleware's extra headers, so they reach the client
    on whatever response this request ends with, errors included.
    """
    ip = client_ip(scope, gateway.settings.TRUSTED_PROXIES)
    trail = record(scope)
    trail.client_ip, trail.key_id = ip, caller.key_id
    limiter = gateway.limiter
    if limiter is None or caller.is_internal:
        return
    decision = await limiter.check(ip)
    extra_headers(scope).update(
        {
            "x-ratelimit-limit-requests": str(decision.limit),
            "x-ratelimit-remaining-requests": str(decision.remaining),
            "x-ratelimit-reset-requests": duration(decision.reset),
        }
    )
    if decision.allowed:
        return
    metrics.RATE_LIMITED.inc()
    wait_ms = max(1, _ceil_ms(decision.retry_after))
    raise GatewayError(
        429,
        f"Rate limit reached: {decision.limit} requests per second per client IP. "
        f"Please try again in {duration(wait_ms / 1000)}.",
        type=RATE_LIMIT,
        code="rate_limit_exceeded",
        headers={"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)},
    )


def duration(seconds: float) -> str:
    """OpenAI's style for reset times: `250ms` below a second, `1s` or `1.5s` above."""
    ms = max(0, _ceil_ms(seconds))
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:g}s"


def _ceil_ms(seconds: float) -> int:
    # Round to the microsecond first, so 0.25 s that arrived as 0.2500000001 is still 250 ms.
    return math.ceil(round(seconds * 1000, 3))
