"""The operator console at /ui: server-rendered pages over the gateway's own services.

Only with GATEWAY_ADMIN_TOKEN; without it nothing is mounted and every /ui path is a 404.
Not API traffic: the per-IP limit (app/api/admission.py) counts /api/v1 and /v1 only, while the
sign-in form is throttled by the same failed-authentication limit as API keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, request_response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from app.api.middleware import API_PREFIXES
from app.config.settings import Settings
from app.ui import batches_pages, keys_pages, pages, usage_pages
from app.ui.console import Console
from app.ui.stats import RecordEmbeddings, RollingStats
from app.ui.web import HERE, Context, SecureHeaders, signed_in

__all__ = ["install"]


def install(app: FastAPI, settings: Settings) -> Console | None:
    """Mount the console and its traffic statistics. Call it after the other middleware, so
    the statistics see every embeddings request, the per-IP limit's 429s included."""
    if settings.GATEWAY_ADMIN_TOKEN is None:
        return None
    console: Console
    stats = RollingStats(
        redis=(lambda: console.redis) if settings.REDIS_URL else None,
        prefix=settings.RATE_LIMIT_KEY_PREFIX + "console-stats:",
        timeout=settings.CACHE_TIMEOUT_MS / 1000,
    )
    console = Console(settings, stats)
    app.router.routes.extend(_routes(console))
    paths = frozenset(prefix + "/embeddings" for prefix in API_PREFIXES)
    app.add_middleware(RecordEmbeddings, stats=stats, paths=paths)
    return console


def _routes(console: Console) -> list[Route | Mount]:
    def page(handler: Callable[[Console, Context], Awaitable[Response]]) -> ASGIApp:
        return SecureHeaders(
            request_response(signed_in(console.sessions, partial(handler, console)))
        )

    def public(handler: Callable[[Console, Request], Awaitable[Response]]) -> ASGIApp:
        return SecureHeaders(request_response(partial(handler, console)))

    static = StaticFiles(directory=str(HERE / "static"))
    return [
        Route("/ui", page(pages.overview), methods=["GET"]),
        Route("/ui/login", public(pages.login_page), methods=["GET"]),
        Route("/ui/login", public(pages.login), methods=["POST"]),
        Route("/ui/logout", page(pages.logout), methods=["POST"]),
        Route("/ui/routes", page(pages.routes), methods=["GET"]),
        Route("/ui/keys", page(keys_pages.list_page), methods=["GET"]),
        Route("/ui/keys", page(keys_pages.create), methods=["POST"]),
        Route("/ui/keys/{key_id}", page(keys_pages.detail), methods=["GET"]),
        Route("/ui/keys/{key_id}/{action}", page(keys_pages.change), methods=["POST"]),
        Route("/ui/usage", page(usage_pages.usage), methods=["GET"]),
        Route("/ui/usage.csv", page(usage_pages.usage_csv), methods=["GET"]),
        Route("/ui/batches", page(batches_pages.batches_page), methods=["GET"]),
        Route("/ui/batches/{batch_id}/cancel", page(batches_pages.cancel), methods=["POST"]),
        Route("/ui/files/{file_id}/content", page(batches_pages.file_content), methods=["GET"]),
        Route("/ui/playground", page(pages.playground), methods=["GET", "POST"]),
        Mount("/ui/static", app=SecureHeaders(static)),
    ]
