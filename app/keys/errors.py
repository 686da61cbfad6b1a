"""The managed keys' own domain errors: a key's limit said no. (Those shared with
authentication, such as `BudgetSpent`, are in app/errors.py.) app/api/errors.py maps them."""

from __future__ import annotations

from typing import Literal

from app.errors import DomainError
from app.keys.limits import TokenDecision
from app.state.rate_limits import Decision

LimitKind = Literal["requests", "tokens"]


class KeyRateLimited(DomainError):
    """A managed key's own requests-per-second or tokens-per-minute limit refused a request.

    `retry_after` is None when the request can never fit (more tokens than the whole limit).
    The decisions are the key's figures, which the response reports in its x-ratelimit-*."""

    def __init__(
        self,
        kind: LimitKind,
        what: str,
        retry_after: float | None,
        *,
        requests: Decision | None,
        tokens: TokenDecision | None,
    ) -> None:
        super().__init__(f"Rate limit reached: {what}.")
        self.kind = kind
        self.retry_after = retry_after
        self.requests = requests
        self.tokens = tokens
