"""The one typed per-request object: who and what one request is, filled in as it goes and read
once at the end for metrics and the log. It is the only thing the gateway keeps in
`scope["state"]`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from starlette.types import Scope

from app.core.upstream_cost import UpstreamCost
from app.runtime.lifecycle import LifespanState


@dataclass(slots=True)
class RequestContext:
    request_id: str = ""
    # Headers for whatever response the request ends with, errors included (x-ratelimit-*).
    response_headers: dict[str, str] = field(default_factory=dict)
    client_ip: str = ""
    key_id: str | None = None
    model: str | None = None  # a registry ID, or metrics.UNKNOWN once validation saw a model
    providers: list[str] = field(default_factory=list)
    upstream_seconds: float = 0.0
    prompt_tokens: int | None = None
    upstream_tokens: int | None = None

    def upstream(self, cost: UpstreamCost) -> None:
        self.providers, self.upstream_seconds = cost.providers, cost.seconds


def request_context(scope: Scope) -> RequestContext:
    state = scope.setdefault("state", {})
    existing = state.get("context")
    if existing is None:
        existing = state["context"] = RequestContext()
    return cast(RequestContext, existing)


def lifespan_state(scope: Scope) -> LifespanState:
    """The running gateway's services and drain state, as the lifespan handed them to this
    request (uvicorn copies the lifespan's state into every request's scope)."""
    return cast(LifespanState, scope["state"])
