"""The first two steps of every API request: the per-IP limit, then authentication.

The per-IP limit is a pure ASGI step that runs before anything else looks at the request (its
key, its path, its body), so unauthenticated traffic, key guessing and unknown paths all count.
Authentication then throttles failed attempts per IP more tightly still (`AuthFailureThrottle`).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app import metrics
from app.api.client_ip import client_ip
from app.api.context import lifespan_state, request_context
from app.api.errors import GatewayError, duration, too_many_requests
from app.api.middleware import api_route, extra_headers, send_error
from app.auth.callers import Caller
from app.auth.throttle import AuthFailureThrottle
from app.errors import AuthenticationFailed, ManagedKeyRefused
from app.keys.limits import TokenDecision
from app.runtime.services import Services
from app.state.rate_limits import Decision

__all__ = ["IPLimit", "authenticate", "limit_by_ip", "presented_key", "ratelimit_headers"]


def ratelimit_headers(
    requests: Decision | None, tokens: TokenDecision | None = None
) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for a limit's figures: the one place they are built (the
    per-IP limit's, and a managed key's own)."""
    headers: dict[str, str] = {}
    if requests is not None:
        headers["x-ratelimit-limit-requests"] = str(requests.limit)
        headers["x-ratelimit-remaining-requests"] = str(requests.remaining)
        headers["x-ratelimit-reset-requests"] = duration(requests.reset)
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(tokens.limit)
        headers["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
        headers["x-ratelimit-reset-tokens"] = duration(tokens.reset)
    return headers


def presented_key(headers: Headers) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, else `x-api-key`."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


class IPLimit:
    """Pure ASGI: count every request under `/api/v1` and `/v1` against its client IP.

    Requests carrying `GATEWAY_INTERNAL_TOKEN` are exempt. Telling them apart is one SHA-256
    and a constant-time compare, so it is safe before the limit; a wrong internal token is
    just a wrong key, counted like any other request and failed at authentication.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and api_route(scope["path"]) is not None:
            try:
                await limit_by_ip(scope, lifespan_state(scope)["services"])
            except GatewayError as error:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)


async def limit_by_ip(scope: Scope, services: Services) -> None:
    """Count the request against its client IP; raise a 429 when the IP is over its limit.

    The x-ratelimit-* headers go into the middleware's extra headers, so they reach the client
    on whatever response this request ends with, errors included.
    """
    ip = client_ip(scope, services.settings.TRUSTED_PROXIES)
    request_context(scope).client_ip = ip
    limiter = services.limiter
    if limiter is None or services.auth.is_internal_token(presented_key(Headers(scope=scope))):
        return
    decision = await limiter.check(ip)
    extra_headers(scope).update(ratelimit_headers(decision))
    if decision.allowed:
        return
    metrics.RATE_LIMITED.inc()
    raise too_many_requests(
        f"Rate limit reached: {decision.limit} requests per second per client IP.",
        decision.retry_after,
        code="rate_limit_exceeded",
    )


async def authenticate(
    scope: Scope, services: Services, headers: Headers, *, required: bool
) -> Caller:
    """Who is calling; a 401 for a missing or wrong key, a 429 once an IP fails too often.

    A managed key that exists but is revoked, disabled or expired is no guess: it gets its 401
    without counting against its IP (a client looping on a leaked, revoked key must not lock
    out every other key behind the same NAT), and the access log names its key id."""
    context = request_context(scope)
    throttle: AuthFailureThrottle | None = services.auth_failures
    if throttle is not None:
        throttle.check(context.client_ip)  # blocked: not even a right key is looked at
    try:
        caller = await services.auth.identify(presented_key(headers), required=required)
    except ManagedKeyRefused as refused:
        context.key_id = refused.key_id
        raise
    except AuthenticationFailed:
        if throttle is not None:
            await throttle.failed(context.client_ip)
        raise
    context.key_id = caller.key_id
    return caller
