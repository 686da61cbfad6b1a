"""Errors as values: raised where they are known, rendered in OpenAI's shape in one place."""

from __future__ import annotations

import orjson

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
UPSTREAM = "upstream_error"
TIMEOUT = "timeout_error"
SERVER = "server_error"
NOT_FOUND = "not_found_error"


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


def invalid_request(message: str, *, param: str | None = None, code: str | None = None):
    return GatewayError(400, message, param=param, code=code)


def upstream_failure(message: str, *, code: str = "upstream_error") -> GatewayError:
    return GatewayError(502, message, type=UPSTREAM, code=code)


def upstream_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, type=TIMEOUT, code="upstream_timeout")
