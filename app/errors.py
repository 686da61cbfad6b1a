"""Errors as values: raised where they are known, rendered in OpenAI's shape in one place.

Below the HTTP layer code raises a `DomainError`: what happened, with the facts, and no HTTP in
it. These are the ones shared by authentication and managed keys; routing's own are in
app/core/errors.py (they carry what reaching the upstreams cost). `app/api/errors.py` maps each
one to a `GatewayError` (status, OpenAI error type, code, headers) in one table.
"""

from __future__ import annotations

from typing import Literal


class DomainError(Exception):
    """Something the core knows went wrong for this request, with the facts; no status."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- who is calling (app/auth/callers.py, app/keys/service.py, app/auth/throttle.py) ---------


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

    def __init__(self, reason: KeyRefusal, key_id: str) -> None:
        super().__init__(self._MESSAGES[reason])
        self.reason = reason
        self.key_id = key_id  # which known key is still in use: for the access log, never hidden


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


class BudgetInFlight(DomainError):
    """The budget is not spent, but what requests in flight reserved leaves no room for this
    one: retry once they settle."""

    def __init__(self, budget_usd: float, spent_usd: float, retry_after: float) -> None:
        super().__init__(
            f"This key's budget of ${budget_usd:g} is held by requests in flight "
            f"(${spent_usd:.6f} spent so far)."
        )
        self.retry_after = retry_after


class KeyStoreUnavailable(DomainError):
    def __init__(self) -> None:
        super().__init__("The gateway's key store is not answering; please try again shortly.")


class InvalidKeyChange(DomainError):
    """An admin change that cannot be made (an unknown model, rotating a revoked key)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


# -- usage reports (app/state/usage_ledger.py) ---------------------------------------------


class UsageUnavailable(DomainError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            f"Usage cannot be read right now ({reason}); the report would be incomplete, so "
            "none is given. Please try again shortly."
        )
