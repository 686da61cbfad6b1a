"""Render every error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.errors import INVALID_REQUEST, NOT_FOUND, GatewayError


def error_response(error: GatewayError) -> Response:
    return Response(
        error.body(), status_code=error.status, headers=error.headers, media_type="application/json"
    )


async def _gateway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    target = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error = GatewayError(
            404, f"Unknown request URL: {target}.", type=NOT_FOUND, code="unknown_url"
        )
    elif exc.status_code == 405:
        error = GatewayError(405, f"Method not allowed: {target}.", code="method_not_allowed")
    else:
        error = GatewayError(exc.status_code, str(exc.detail), type=INVALID_REQUEST)
    error.headers.update(exc.headers or {})
    return error_response(error)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    return error_response(
        GatewayError(400, first.get("msg", "Invalid request."), param=".".join(location) or None)
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
