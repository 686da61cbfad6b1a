"""What every upstream adapter is: the call it takes, the result it gives, the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from app.config.registry import Model, ProviderConfig, Route


@dataclass(slots=True)
class UpstreamCall:
    upstream_model: str
    inputs: list[str] | list[list[int]]
    dimensions: int | None
    user: str | None
    expected_dims: int
    want_base64: bool
    timeout: float
    request_id: str
    # "query", "document", or None (the client and the route named none); each provider maps
    # it to its own vocabulary, or ignores it.
    input_type: str | None = None
    # The route this call is for: its provider-specific `options` and the registry file's
    # directory (the local provider's model directories). None from callers outside routing.
    route: Route | None = None
    # The trace context to send (W3C `traceparent`, ...), set by routing's Dispatch when
    # tracing is on; an HTTP provider adds these headers, an in-process one has no use for them.
    trace_headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider type can be asked for, checked against the registry at start-up."""

    token_ids: bool = True  # takes token-ID arrays as input, not only strings
    dimensions: bool = True  # can shorten vectors itself when sent `dimensions`
    max_inputs: int | None = None  # inputs per call the API takes at most, if it caps them
    base64: bool = False  # can send float32 base64 vectors (`returns_base64` may ask for them)
    input_type: bool = False  # embeds queries and documents differently


@dataclass(slots=True)
class UpstreamResult:
    vectors: np.ndarray  # (len(inputs), expected_dims) float32, validated, in input order
    prompt_tokens: int | None  # what the upstream says it billed, when it says
    # Each input's own count, summing to prompt_tokens, from an upstream that gives one (the
    # local model): a merged call's usage is then split exactly, with no tokenising of ours.
    input_tokens: np.ndarray | None = None


class Failure(Enum):
    """How an upstream call failed, which decides whether to retry, fail over or give up."""

    CONNECT = "connection failed"
    TIMEOUT = "timed out"
    RATE_LIMITED = "rate limited"
    SERVER = "server error"
    MALFORMED = "malformed response"
    AUTH = "rejected the gateway's credentials"
    BAD_REQUEST = "rejected the input"
    OTHER = "unexpected status"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = {Failure.CONNECT, Failure.TIMEOUT, Failure.RATE_LIMITED, Failure.SERVER}
_RETRYABLE |= {Failure.MALFORMED}


class UpstreamError(Exception):
    """A failed upstream call. `detail` is safe to show a client: short, and never a key."""

    def __init__(
        self,
        provider: str,
        failure: Failure,
        detail: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {detail}")
        self.provider = provider
        self.failure = failure
        self.detail = detail
        self.retry_after = retry_after


class Provider(Protocol):
    """One upstream protocol. Adapters never see client requests; they get an UpstreamCall."""

    name: str

    @property
    def display_name(self) -> str: ...  # a class-level name in every adapter

    async def embed(self, call: UpstreamCall) -> UpstreamResult: ...

    async def aclose(self) -> None: ...


class ProviderType(Protocol):
    """A provider type as the table in catalog.py holds it: the class, with what the registry
    and the start-up checks need before any instance exists."""

    # Read-only: each class names its own config model, a subtype of ProviderConfig.
    @property
    def display_name(self) -> str: ...

    @property
    def config_type(self) -> type[ProviderConfig]: ...

    def __call__(self, name: str, config: Any) -> Provider: ...

    def capabilities(self, config: Any) -> Capabilities: ...

    def check_route(self, model: Model, route: Route, config: Any) -> str | None: ...
