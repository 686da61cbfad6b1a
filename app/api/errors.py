"""Render every error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

`GatewayError` is an error as a client sees it: status, OpenAI error type, message, param, code
and headers. The HTTP layer raises it directly (validation, its own limits, the server's
protocol errors); below it code raises domain errors (app/errors.py, app/core/errors.py), and
this is the one place one gets its HTTP status, type, code and headers: `gateway_error` below.
"""

from __future__ import annotations

import math

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.batches.errors import (
    BatchNotCancellable,
    BatchNotFound,
    BatchStoreUnavailable,
    FileNotFound,
    FileTooLarge,
    InvalidBatchRequest,
    InvalidUpload,
    LineOverTokenLimit,
)
from app.core.errors import (
    DeadlineExceeded,
    InputRejected,
    InvalidEmbeddingRequest,
    ModelUnavailable,
    RoutesCoolingDown,
    UndecodableInput,
    UpstreamsFailed,
)
from app.errors import (
    BudgetInFlight,
    BudgetSpent,
    DomainError,
    InvalidApiKey,
    InvalidKeyChange,
    KeyStoreUnavailable,
    ManagedKeyRefused,
    MissingApiKey,
    TooManyFailedAuthentications,
    UsageUnavailable,
)
from app.keys.errors import KeyRateLimited
from app.state.object_store import ObjectStoreError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
UPSTREAM = "upstream_error"
TIMEOUT = "timeout_error"
SERVER = "server_error"
NOT_FOUND = "not_found_error"

INSUFFICIENT_QUOTA = "insufficient_quota"
NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs' signal that retrying cannot help


class GatewayError(Exception):
    """An error a client sees: status, OpenAI error type, message, and optionally param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def too_many_requests(message: str, retry_after: float, *, code: str) -> GatewayError:
    wait_ms = max(1, _ceil_ms(retry_after))
    return GatewayError(
        429,
        f"{message} Please try again in {duration(wait_ms / 1000)}.",
        type=RATE_LIMIT,
        code=code,
        headers={"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)},
    )


def duration(seconds: float) -> str:
    """OpenAI's style for reset times: `250ms` below a second, `1s` or `1.5s` above."""
    ms = max(0, _ceil_ms(seconds))
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:g}s"


def _ceil_ms(seconds: float) -> int:
    # Round to the microsecond first, so 0.25 s that arrived as 0.2500000001 is still 250 ms.
    return math.ceil(round(seconds * 1000, 3))


def gateway_error(error: DomainError) -> GatewayError:
    """What the client sees for a domain error."""
    message = error.message
    match error:
        case MissingApiKey():
            return GatewayError(401, message, type=AUTHENTICATION, code="missing_api_key")
        case InvalidApiKey():
            return GatewayError(401, message, type=AUTHENTICATION, code="invalid_api_key")
        case ManagedKeyRefused(reason=reason):
            return GatewayError(401, message, type=AUTHENTICATION, code=f"api_key_{reason}")
        case TooManyFailedAuthentications(retry_after=retry_after):
            return too_many_requests(message, retry_after, code="too_many_failed_authentications")
        case BudgetSpent():
            return GatewayError(
                429,
                message,
                type=INSUFFICIENT_QUOTA,
                code=INSUFFICIENT_QUOTA,
                headers=dict(NO_RETRY),
            )
        case BudgetInFlight(retry_after=retry_after):
            # Not `insufficient_quota`: the budget is not spent, and a retry may well pass.
            return too_many_requests(message, retry_after, code="budget_in_flight")
        case KeyRateLimited(retry_after=None):
            limited = GatewayError(429, message, type=RATE_LIMIT, code="rate_limit_exceeded")
            limited.headers.update(NO_RETRY)  # this request can never fit the key's limit
            return limited
        case KeyRateLimited(retry_after=float(retry_after)):
            return too_many_requests(message, retry_after, code="rate_limit_exceeded")
        case UsageUnavailable():
            return GatewayError(
                503, message, type=SERVER, code="usage_unavailable", headers={"retry-after": "1"}
            )
        case KeyStoreUnavailable():
            return GatewayError(
                503,
                message,
                type=SERVER,
                code="key_store_unavailable",
                headers={"retry-after": "1"},
            )
        case InvalidKeyChange(field=field):
            return GatewayError(400, message, param=field)
        case InvalidEmbeddingRequest(param=param, code=code):
            return GatewayError(400, message, param=param, code=code)
        case ModelUnavailable():
            # A retry cannot add a provider key.
            return GatewayError(
                503, message, type=SERVER, code="model_unavailable", headers=dict(NO_RETRY)
            )
        case FileNotFound() | BatchNotFound():
            return GatewayError(404, message, type=INVALID_REQUEST, code="not_found")
        case InvalidUpload(param=param):
            return GatewayError(400, message, param=param)
        case FileTooLarge():
            return GatewayError(413, message, code="file_too_large", headers=dict(NO_RETRY))
        case InvalidBatchRequest(param=param, code=code):
            return GatewayError(400, message, param=param, code=code)
        case BatchNotCancellable():
            # Deterministic: the SDKs would otherwise retry a 409 twice.
            return GatewayError(409, message, headers=dict(NO_RETRY))
        case ObjectStoreError():
            return GatewayError(
                503,
                message,
                type=SERVER,
                code="file_storage_unavailable",
                headers={"retry-after": "1"},
            )
        case BatchStoreUnavailable():
            return GatewayError(
                503,
                message,
                type=SERVER,
                code="batch_store_unavailable",
                headers={"retry-after": "1"},
            )
        case LineOverTokenLimit():
            return GatewayError(
                429, message, type=RATE_LIMIT, code="rate_limit_exceeded", headers=dict(NO_RETRY)
            )
        case UndecodableInput():
            return GatewayError(400, message, param="input")
        case InputRejected():
            return GatewayError(400, message, param="input", code="upstream_rejected_input")
        case RoutesCoolingDown():
            return GatewayError(
                503, message, type=UPSTREAM, code="routes_unavailable", headers={"retry-after": "1"}
            )
        case DeadlineExceeded() | UpstreamsFailed(timed_out=True):
            return GatewayError(504, message, type=TIMEOUT, code="upstream_timeout")
        case UpstreamsFailed(auth=auth):
            failed = GatewayError(502, message, type=UPSTREAM, code="upstream_error")
            if auth:
                failed.headers.update(NO_RETRY)  # a retry cannot fix the gateway's own keys
            return failed
    return GatewayError(500, "The gateway hit an internal error.", type=SERVER)


def line_error(error: BaseException) -> tuple[int, bytes]:
    """A Batch API line's failure as the embeddings endpoint would have answered it: (status,
    body), for the line's `response` in the error file (app/batches/chunk.py)."""
    if isinstance(error, GatewayError):
        failed = error
    elif isinstance(error, DomainError):
        failed = gateway_error(error)
    else:
        failed = GatewayError(500, "The gateway hit an internal error.", type=SERVER)
    return failed.status, failed.body()


def error_response(error: GatewayError) -> Response:
    return Response(
        error.body(), status_code=error.status, headers=error.headers, media_type="application/json"
    )


async def _gateway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return error_response(gateway_error(exc))


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
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
