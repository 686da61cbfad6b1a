"""Wiring only: settings → registry → providers → routes, and the lifespan that opens and closes."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute

from app import tracing
from app.api import admin, admin_batches, batches, embeddings, files, models, ops, usage
from app.api.admission import IPLimit
from app.api.errors import install_error_handlers, line_error
from app.api.middleware import API_PREFIXES, GatewayMiddleware
from app.config.report import settings_summary
from app.config.settings import Settings
from app.core.tokens import warm_up
from app.logs import configure_logging
from app.runtime.build import build_batch_runner, build_services, start_limiter
from app.runtime.lifecycle import Lifecycle, LifespanState
from app.runtime.reload import Reloader
from app.state.redis_client import follow_master
from app.ui import install as install_console
from app.ui.console import Console

log = logging.getLogger("app")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The ASGI app. Tests may pass the routing clock (cooldowns, windows), the random source,
    and the wall clock of the Batch API (timestamps, completion windows)."""
    settings = settings or Settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)

    lifecycle = Lifecycle()
    console: Console | None = None  # /ui, only with GATEWAY_ADMIN_TOKEN

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[LifespanState]:
        # Per worker process, from the OTEL_* variables; never stops start-up (app/tracing).
        tracing.start()
        services = build_services(settings, clock, rng, wall_clock)
        reloader = lifecycle.reloader = Reloader(services)
        warm_up()
        await start_limiter(settings, services.limiter)
        if not services.auth.enabled:
            log.warning(
                "AUTH IS OFF: GATEWAY_API_KEYS and GATEWAY_ADMIN_TOKEN are empty, so anyone who "
                "can reach this gateway can use it and spend its provider credit. Set "
                "GATEWAY_API_KEYS, or GATEWAY_ADMIN_TOKEN to manage keys through /admin/v1."
            )
        if services.keys is not None:
            await services.keys.store.start()
            log.info(
                "managed keys in %s; admin API %s",
                services.keys.backend,
                "on at /admin/v1" if settings.GATEWAY_ADMIN_TOKEN else "off",
            )
        log.info("configuration", extra={"settings": settings_summary(settings)})
        registry = services.registry
        log.info(
            "serving %d of the %d models in %s (the others lack a provider API key)",
            len(registry.available()),
            len(registry.models),
            registry.source,
        )
        if console is not None:
            console.attach(services)
        await services.usage.start()
        # Usage and spend go to the shared books in the background, retried until they do.
        writers = [asyncio.create_task(w.run()) for w in services.background_writers()]
        runner = build_batch_runner(services, line_error)
        runner.start()
        follower = asyncio.create_task(follow_master(services.redis))  # Sentinel failovers
        # Everything built so far lives as long as the process: keep it out of the collector's
        # sweeps, whose full passes over it were the p99 tail under load (measured: 68 -> 20 ms).
        gc.collect()
        gc.freeze()
        try:
            # Every request, the server (app/server/worker.py) and the HTTP protocol find the
            # services and the drain state here.
            yield {"services": services, "lifecycle": lifecycle}
        finally:
            await runner.stop()  # drained: its chunks finished or handed back
            for writer in writers:
                writer.cancel()
            follower.cancel()
            await reloader.aclose()
            await services.aclose()
            # Here, not at exit: uvicorn ends a worker by its signal, so atexit never runs.
            await tracing.flush()

    app = FastAPI(
        title="Embeddings Gateway",
        version="0.1.0",
        description="OpenAI-compatible embeddings over several upstream providers.",
        lifespan=lifespan,
        # A slash redirect would echo the client's Host header back as a Location.
        redirect_slashes=False,
        # The gateway exports its own Prometheus metrics and access log. FastAPI's native
        # OpenTelemetry would also look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # First in the list, as the router tries routes in order: nearly every request is this one.
    app.router.routes[0:0] = [embeddings.route(prefix) for prefix in API_PREFIXES]
    for prefix in API_PREFIXES:
        app.include_router(models.router, prefix=prefix, include_in_schema=prefix == "/api/v1")
        app.include_router(usage.router, prefix=prefix, include_in_schema=prefix == "/api/v1")
        # The Batch API is OpenAI's (docs/batches.md), not (yet) described in /openapi.json.
        app.include_router(files.router, prefix=prefix, include_in_schema=False)
        app.include_router(batches.router, prefix=prefix, include_in_schema=False)
    app.include_router(ops.router)
    if settings.GATEWAY_ADMIN_TOKEN is not None:
        # Not mounted at all without the token: every admin path is an ordinary 404.
        app.include_router(admin.router, prefix="/admin/v1", include_in_schema=False)
        app.include_router(admin_batches.router, prefix="/admin/v1", include_in_schema=False)
    if settings.METRICS_ENABLED:
        app.add_api_route(
            "/metrics",
            ops.metrics_endpoint,
            methods=["GET"],
            summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
            response_class=PlainTextResponse,
        )
    _document(app, [embeddings.openapi_route("/api/v1")])
    install_error_handlers(app)
    # The last added runs first: request ID and body cap, then the per-IP limit, then routing.
    app.add_middleware(IPLimit)
    upload_cap = settings.BATCH_MAX_FILE_BYTES + files.MULTIPART_OVERHEAD_BYTES
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.MAX_REQUEST_BODY_BYTES,
        body_caps={prefix + files.PATH: upload_cap for prefix in API_PREFIXES},
    )
    console = install_console(app, settings)  # outermost, for its traffic statistics
    return app


def _document(app: FastAPI, unmounted: list[APIRoute]) -> None:
    """/openapi.json with routes that are served as plain ASGI apps, which FastAPI cannot see."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*unmounted, *app.routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    # `app.main:app` is built on first access, so importing this module has no side effects.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
