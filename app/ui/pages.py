"""Sign-in and sign-out, Overview, Routes and Playground."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.api.client_ip import client_ip, parse_address
from app.api.errors import GatewayError
from app.api.middleware import request_id
from app.core.embedding_request import parse_embedding_request
from app.core.routing.hedging import hedge_delay
from app.keys.service import audit
from app.ui.charts import line_chart
from app.ui.console import Console
from app.ui.errors import ACTION_ERRORS, as_http_error
from app.ui.session import COOKIE, SessionUnchecked
from app.ui.web import Context, from_another_site, read_form, render, unchecked_page

PLAYGROUND_KEY_ID = "console"  # usage of the Playground is reported under this key id


async def login_page(console: Console, request: Request) -> Response:
    try:
        if await console.sessions().read(request.cookies.get(COOKIE)) is not None:
            return RedirectResponse("/ui", status_code=303)
    except SessionUnchecked:
        return unchecked_page(request, sign_in=True)
    return render(request, "login.html", None)


async def login(console: Console, request: Request) -> Response:
    services = console.services
    if from_another_site(request, _from_trusted_proxy(console, request)):
        # Before the throttle: another site's forms must not use up this IP's allowance of
        # failed sign-ins (which the API shares), nor sign a browser in as someone else.
        return render(
            request, "login.html", None, 403, error="Sign in from the console's own page."
        )
    ip = client_ip(request.scope, services.settings.TRUSTED_PROXIES)
    throttle = services.auth_failures
    token = (await read_form(request)).get("token", "").strip()
    try:
        if throttle is not None:
            throttle.check(ip)  # blocked: not even a right token is looked at
        if not token or not console.token_is(token):
            if throttle is not None:
                await throttle.failed(ip)
            return render(request, "login.html", None, 401, error="That is not the admin token.")
    except ACTION_ERRORS as caught:  # too many failed sign-ins from this IP
        error = as_http_error(caught)
        return render(request, "login.html", None, error.status, error=error.message)
    cookie, _ = console.sessions().issue()
    audit(console.actor, "console sign-in", "*", [], client_ip=ip)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=console.settings.CONSOLE_SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=_is_https(console, request),
    )
    return response


def _is_https(console: Console, request: Request) -> bool:
    """HTTPS here, or at a trusted proxy in front that says so (then the cookie is Secure)."""
    if request.url.scheme == "https":
        return True
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return _from_trusted_proxy(console, request) and forwarded == "https"


def _from_trusted_proxy(console: Console, request: Request) -> bool:
    peer = parse_address(request.client.host) if request.client else None
    return peer is not None and any(peer in net for net in console.settings.TRUSTED_PROXIES)


async def logout(console: Console, ctx: Context) -> Response:
    await console.sessions().end(ctx.session)
    audit(console.actor, "console sign-out", "*", [])
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


async def overview(console: Console, ctx: Context) -> Response:
    registry = console.services.registry
    series, everywhere = await console.stats.last_hour_everywhere()
    charts = []
    for one in series:
        span = (_clock(one.minutes[0]), _clock(one.minutes[-1]))
        charts.append(
            {
                "model": one.model,
                "requests": one.total_requests,
                "rps": line_chart(
                    f"{one.model}: requests/s", [("requests/s", one.requests_per_second)], span
                ),
                "errors": line_chart(
                    f"{one.model}: error rate", [("error rate", one.error_rate)], span
                ),
                "latency": line_chart(
                    f"{one.model}: latency (ms)", [("p50", one.p50_ms), ("p99", one.p99_ms)], span
                ),
            }
        )
    served = registry.available()
    unserved = [m for m in registry.models.values() if not m.available]
    return render(
        ctx.request,
        "overview.html",
        ctx.session,
        charts=charts,
        served=served,
        unserved=unserved,
        pid=os.getpid(),
        workers=console.settings.WORKERS,
        everywhere=everywhere,
    )


def _clock(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%H:%M UTC")


async def routes(console: Console, ctx: Context) -> Response:
    router = console.services.router
    models = []
    for model in console.services.registry.models.values():
        rows = []
        for route in model.routes:
            state = router.state(route)
            health, latency = state.health, state.latency
            calls, hedges = state.hedges.window()
            delay = hedge_delay(route.policy, latency)
            left = health.cooldown_left()
            rows.append(
                {
                    "provider": route.provider,
                    "upstream_model": route.upstream_model,
                    "usable": route.usable,
                    "key_hint": registry_key_hint(console, route.provider),
                    "cooling": health.is_open,
                    "cooldown_left": left,
                    "failures": health.consecutive_failures,
                    "threshold": route.policy.cooldown_failures,
                    "last_error": health.last_error,
                    "last_error_at": _ago(health.last_error_at),
                    "ewma_ms": None if latency.ewma is None else latency.ewma * 1000,
                    "p95_ms": None if latency.p95() is None else latency.p95() * 1000,  # type: ignore[operator]
                    "hedge": route.policy.hedge_after_ms,
                    "hedge_delay_ms": None if delay is None else delay * 1000,
                    "hedge_calls": calls,
                    "hedges": hedges,
                    "weight": route.weight,
                }
            )
        models.append({"model": model, "routes": rows})
    return render(
        ctx.request,
        "routes.html",
        ctx.session,
        models=models,
        pid=os.getpid(),
        workers=console.settings.WORKERS,
    )


def registry_key_hint(console: Console, provider: str) -> str:
    config = console.services.registry.providers.get(provider)
    return config.key_hint if config is not None else ""


def _ago(when: float | None) -> str | None:
    if when is None:
        return None
    seconds = max(0, int(time.time() - when))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


async def playground(console: Console, ctx: Context) -> Response:
    models = [m.id for m in console.services.registry.available()]
    if ctx.request.method == "GET":
        return render(ctx.request, "playground.html", ctx.session, models=models, form={})
    form = ctx.form
    texts = [t for t in (form.get("text_a", ""), form.get("text_b", "")) if t.strip()]
    result = None
    error = None
    try:
        result = await _embed(console, ctx.request, form.get("model", ""), texts)
    except ACTION_ERRORS as caught:
        exc = as_http_error(caught)
        error = exc.message
    return render(
        ctx.request,
        "playground.html",
        ctx.session,
        400 if error else 200,
        models=models,
        form=form,
        result=result,
        error=error,
    )


async def _embed(
    console: Console, request: Request, model: str, texts: list[str]
) -> dict[str, Any]:
    """The API's own path below HTTP: the same validation, routing, cache and usage records,
    with the operator as the caller (no client key exists for it, and none is needed)."""
    services = console.services
    if not texts:
        raise GatewayError(400, "Type at least one text.")
    body = orjson.dumps({"model": model, "input": texts})
    job = await parse_embedding_request(body, services.registry, request_id(request.scope))
    began = time.perf_counter()
    embedded = await services.embedder.embed(
        job, services.settings.REQUEST_TIMEOUT_SECONDS, read_cache=True
    )
    seconds = time.perf_counter() - began
    services.usage.record(
        PLAYGROUND_KEY_ID,
        job.model.id,
        input_tokens=embedded.prompt_tokens,
        upstream_tokens=embedded.upstream_tokens,
        cached_tokens=embedded.cached_tokens,
        price_per_million=job.model.config.pricing.per_million_tokens,
    )
    vectors = embedded.vectors
    cosine = None
    if len(vectors) == 2:
        a, b = vectors[0].astype(np.float64), vectors[1].astype(np.float64)
        norm = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b) / norm if norm else 0.0
    return {
        "model": job.model.id,
        "dimensions": int(vectors.shape[1]),
        "latency_ms": seconds * 1000,
        "tokens": embedded.prompt_tokens,
        "cache": embedded.cache_status.value if embedded.cache_status else "off",
        "cosine": cosine,
        "preview": [f"{v:.4f}" for v in vectors[0][:8]],
    }
