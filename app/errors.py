"""Errors as values: raised where they are known, rendered in OpenAI's shape in one place.

Two kinds. Below the HTTP layer (routing, the embedder, auth, managed keys) code raises a
`DomainError`: what happened, with the facts, and no HTTP in it. `app/api/errors.py` maps each
one to a `GatewayError` (status, OpenAI error type, code, headers) in one table. The HTTP layer
itself (validation, policy, the server's protocol errors) raises `GatewayError` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import orjson

from app.trace import UpstreamTrace

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


class DomainError(Exception):
    """Something the core knows went wrong for this request, with the facts; no status."""

    # What reaching the upstreams cost before it went wrong (routing's errors carry it).
    trace: UpstreamTrace | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- who is calling (app/auth.py, app/keys/service.py, app/auth_throttle.py) ----------------


class AuthenticationFailed(DomainError):
    """The caller could not be identified: no key, a wrong key, or a key no longer valid."""


class MissingApiKey(AuthenticationFailed):
    def __init__(self) -> None:
        super().__init__(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
            "or 'x-api-key: <key>'."
        )


class InvalidApiKey(AuthenticationFailed):
    def __init__(self) -> None:
        super().__init__("Incorrect API key provided.")


KeyRefusal = Literal["revoked", "disabled", "expired"]


class ManagedKeyRefused(AuthenticationFailed):
    """A managed key that exists but may not be used any more."""

    _MESSAGES = {
        "revoked": "This API key has been revoked.",
        "disabled": "This API key is disabled.",
        "expired": "This API key has expired.",
    }

    def __init__(self, reason: KeyRefusal) -> None:
        super().__init__(self._MESSAGES[reason])
        self.reason = reason


class TooManyFailedAuthentications(DomainError):
    def __init__(self, limit: int, retry_after: float) -> None:
        super().__init__(
            f"Too many failed authentications from your IP: at most {limit} per minute."
        )
        self.limit = limit
        self.retry_after = retry_after


# -- managed keys (app/keys/service.py) --------------------------------------------------


class BudgetSpent(DomainError):
    def __init__(self, period_name: str, budget_usd: float, spent_usd: float) -> None:
        super().__init__(
            f"You exceeded your current quota: this key's {period_name} budget of "
            f"${budget_usd:g} is spent (${spent_usd:.6f} so far)."
        )
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd


class KeyStoreUnavailable(DomainError):
    def __init__(self) -> None:
        super().__init__("The gateway's key store is not answering; please try again shortly.")


class InvalidKeyChange(DomainError):
    """An admin change that cannot be made (an unknown model, rotating a revoked key)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


# -- routing (app/routing.py) ------------------------------------------------------------


class UndecodableInput(DomainError):
    """Token IDs a route needs as text that cl100k_base cannot decode."""


class InputRejected(DomainError):
    """An upstream refused the input itself: no other route or retry can fix that."""

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"{provider} rejected the input: {detail}")
        self.provider = provider
        self.detail = detail


class RoutesCoolingDown(DomainError):
    """Every route was skipped: each is cooling down after repeated failures."""

    def __init__(self, model_id: str, skipped: Sequence[str]) -> None:
        super().__init__(
            f"Every route for model '{model_id}' is cooling down after repeated failures "
            f"({', '.join(skipped) or 'none'}); try again shortly"
        )
        self.model_id = model_id
        self.skipped = list(skipped)


class UpstreamsFailed(DomainError):
    """Every route tried failed. `timed_out`: every failure was a timeout; `auth`: every one
    was the upstream refusing the gateway's own key."""

    def __init__(self, model_id: str, details: Sequence[str], *, timed_out: bool, auth: bool):
        super().__init__(f"Upstream failure for model '{model_id}': {'; '.join(details)}")
        self.model_id = model_id
        self.details = list(details)
        self.timed_out = timed_out
        self.auth = auth


class DeadlineExceeded(DomainError):
    """No upstream answered within the request's deadline."""

    def __init__(self, model_id: str, timeout: float, details: Sequence[str]) -> None:
        tried = f" ({'; '.join(details)})" if details else ""
        super().__init__(f"No upstream answered for model '{model_id}' within {timeout:g}s" + tried)
        self.model_id = model_id
        self.timeout = timeout
        self.details = list(details)
