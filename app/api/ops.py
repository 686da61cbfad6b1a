"""Operations routes: liveness, readiness and Prometheus metrics. No auth, no rate limit."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app import metrics
from app.api.errors import GatewayError
from app.api.responses import json_response

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: registry loaded, Redis reachable, not shutting down")
async def readyz(request: Request) -> Response:
    state = request.scope.get("state") or {}
    services, lifecycle = state.get("services"), state.get("lifecycle")
    if services is None:
        raise _not_ready("the model registry is not loaded yet")
    if lifecycle is not None and lifecycle.draining:
        # Still serving (docs/operations.md, "Graceful shutdown"): this is for load balancers
        # to notice.
        raise _not_ready("shutting down")
    if services.redis is not None:
        try:
            async with asyncio.timeout(max(0.25, services.settings.REDIS_TIMEOUT_MS / 1000)):
                await services.redis.ping()
        except Exception as exc:  # any failure to answer means not ready; say which
            raise _not_ready(f"Redis is unreachable ({type(exc).__name__})") from None
    # Details, not a verdict: a ledger that cannot write keeps its figures and retries, and the
    # gateway still serves; an operator (or an alert on the metric) sees it here.
    books = {writer.name: writer.health() for writer in services.background_writers()}
    return json_response(
        {"status": "ready", "models": len(services.registry.available()), "books": books}
    )


def _not_ready(reason: str) -> GatewayError:
    return GatewayError(503, f"Not ready: {reason}.", type="server_error", code="not_ready")


async def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
