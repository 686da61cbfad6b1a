"""Pure ASGI middleware (no BaseHTTPMiddleware): request IDs, body-size cap, response headers,
a last-resort OpenAI-shaped 500 that never shows a stack trace, and, when tracing is on, the
request's SERVER span (app/tracing), current while the request runs and the access line is
written."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics, tracing
from app.api.context import RequestContext, request_context
from app.api.errors import SERVER, GatewayError

log = logging.getLogger("app.api")
access_log = logging.getLogger("app.access")

API_PREFIXES = ("/api/v1", "/v1")
_API_ROUTES = {
    "/embeddings": "embeddings",
    "/embedding-models": "embedding_models",
    "/models": "models",
    "/usage": "usage",
    "/files": "files",
    "/batches": "batches",
}
# Paths under these get the same label as the collection (ids stay out of the labels).
_API_ROUTE_TREES = {"/files/": "files", "/batches/": "batches"}

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _new_request_id() -> str:
    # A correlation ID, not a secret: 128 bits from `random`, shaped like uuid4().hex, without
    # the system call for OS randomness that uuid4 makes on every request.
    return f"{random.getrandbits(128):032x}"


def extra_headers(scope: Scope) -> dict[str, str]:
    """Headers a handler wants on whatever response ends up being sent (errors included)."""
    return request_context(scope).response_headers


def request_id(scope: Scope) -> str:
    return request_context(scope).request_id


class BodyTooLarge(GatewayError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"The request body exceeds the gateway's limit of {limit} bytes.",
            code="request_too_large",
        )


class GatewayMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, body_caps: Mapping[str, int] | None = None
    ) -> None:
        """`body_caps`: paths with a cap of their own (file uploads), instead of the default."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_caps = dict(body_caps or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and _REQUEST_ID.match(incoming) else _new_request_id()
        headers = extra_headers(scope)
        request_context(scope).request_id = rid
        started = False
        status = 500
        route = api_route(scope["path"])
        began = time.perf_counter()
        if route is not None:
            metrics.IN_FLIGHT.inc()
        traced = tracing.active
        span = known = None
        if traced is not None:
            # The API's paths are their own routes; any other's comes from the router.
            known = scope["path"] if route is not None and route != "other" else None
            span = traced.server_start(scope, known)

        async def send_with_headers(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                raw = list(message.get("headers", []))
                raw.append((b"x-request-id", rid.encode("latin-1")))
                raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
                message = {**message, "headers": raw}
            await send(message)

        error_type: str | None = None  # for the span: why there is no (or a failed) response
        fault = False  # the gateway's own failure, not the client's
        try:
            cap = self.body_caps.get(scope["path"], self.max_body_bytes)
            declared = _header(scope, b"content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                await send_error(send_with_headers, BodyTooLarge(cap))
                return
            await self.app(scope, self._capped(receive, cap), send_with_headers)
        except ClientDisconnect:
            status = 499  # the client went away (or timed out) before its body arrived
            error_type = "client_disconnected"
        except Exception as exc:
            error_type, fault = type(exc).__qualname__, True
            log.exception("unhandled error", extra={"request_id": rid})
            if not started:
                await send_error(
                    send_with_headers,
                    GatewayError(500, "The gateway hit an internal error.", type=SERVER),
                )
        finally:
            if route is not None:
                metrics.IN_FLIGHT.dec()
                _finish(scope, route, status, time.perf_counter() - began, rid)
            if traced is not None and span is not None:
                traced.server_end(
                    span,
                    status=status if started else None,
                    route=None if known else _route_template(scope),
                    client_address=request_context(scope).client_ip or client_host(scope),
                    error_type=error_type,
                    fault=fault,
                )

    def _capped(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def receive_capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return receive_capped


async def send_error(send: Send, error: GatewayError) -> None:
    body = error.body()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def api_route(path: str) -> str | None:
    """A fixed label for an API path, or None for paths that are not API traffic."""
    for prefix in API_PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix) :]
            found = _API_ROUTES.get(rest)
            if found is None:
                tree = rest[: rest.find("/", 1) + 1] if rest.find("/", 1) > 0 else ""
                found = _API_ROUTE_TREES.get(tree, "other")
            return found
    return None


def _finish(scope: Scope, route: str, status: int, seconds: float, rid: str) -> None:
    context: RequestContext = request_context(scope)
    metrics.REQUESTS.labels(route, context.model or metrics.NONE, str(status)).inc()
    metrics.REQUEST_SECONDS.labels(route).observe(seconds)
    access_log.info(
        "request",
        extra={
            "request_id": rid,
            "method": scope.get("method"),
            "path": scope["path"],
            "status": status,
            "client_ip": context.client_ip or client_host(scope),
            "key_id": context.key_id,
            "model": context.model,
            "providers": context.providers,
            "duration_ms": round(seconds * 1000, 2),
            "upstream_ms": round(context.upstream_seconds * 1000, 2),
            "prompt_tokens": context.prompt_tokens,
            "upstream_tokens": context.upstream_tokens,
        },
    )


def _route_template(scope: Scope) -> str | None:
    """The matched route's path template (`/admin/v1/keys/{key_id}`), for the span's name."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def client_host(scope: Scope) -> str:
    client: Any = scope.get("client")
    return client[0] if client else ""
