"""Routing's domain errors: each carries what reaching the upstreams cost before it went wrong
(`cost`), for the request's log line and metrics."""

from __future__ import annotations

from collections.abc import Sequence

from app.core.upstream_cost import UpstreamCost
from app.errors import DomainError


class RoutingError(DomainError):
    """Routing could not embed the job; `cost` is filled in by the router and the embedder."""

    cost: UpstreamCost | None = None


class UndecodableInput(RoutingError):
    """Token IDs a route needs as text that cl100k_base cannot decode."""


class InputRejected(RoutingError):
    """An upstream refused the input itself: no other route or retry can fix that."""

    def __init__(self, provider: str, detail: str) -> None:
        super().__init__(f"{provider} rejected the input: {detail}")
        self.provider = provider
        self.detail = detail


class RoutesCoolingDown(RoutingError):
    """Every route was skipped: each is cooling down after repeated failures."""

    def __init__(self, model_id: str, skipped: Sequence[str]) -> None:
        super().__init__(
            f"Every route for model '{model_id}' is cooling down after repeated failures "
            f"({', '.join(skipped) or 'none'}); try again shortly"
        )
        self.model_id = model_id
        self.skipped = list(skipped)


class UpstreamsFailed(RoutingError):
    """Every route tried failed. `timed_out`: every failure was a timeout; `auth`: every one
    was the upstream refusing the gateway's own key."""

    def __init__(self, model_id: str, details: Sequence[str], *, timed_out: bool, auth: bool):
        super().__init__(f"Upstream failure for model '{model_id}': {'; '.join(details)}")
        self.model_id = model_id
        self.details = list(details)
        self.timed_out = timed_out
        self.auth = auth


class DeadlineExceeded(RoutingError):
    """No upstream answered within the request's deadline."""

    def __init__(self, model_id: str, timeout: float, details: Sequence[str]) -> None:
        tried = f" ({'; '.join(details)})" if details else ""
        super().__init__(f"No upstream answered for model '{model_id}' within {timeout:g}s" + tried)
        self.model_id = model_id
        self.timeout = timeout
        self.details = list(details)


# -- the embeddings request itself (app/core/embedding_request.py) ---------------------------


class InvalidEmbeddingRequest(DomainError):
    """An embeddings body the gateway cannot take: what is wrong, the field (`param`) and
    OpenAI's error code where it has one."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class UnknownModel(InvalidEmbeddingRequest):
    """The request names a model this caller cannot use: not in the registry, or not allowed
    (answered alike, so a key cannot tell a model it may not use from none)."""

    def __init__(self, message: str, model_id: str) -> None:
        super().__init__(message, param="model", code="model_not_found")
        self.model_id = model_id


class ModelUnavailable(DomainError):
    """The model exists but no provider of it has an API key in this gateway."""
