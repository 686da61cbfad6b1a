"""The model registry's types: providers, models and routes, as validated once at start-up.

Reading the YAML file (interpolation, provider types, error messages) is
app/config/registry_file.py; this module is what the rest of the gateway, the provider types
included, builds on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)


class RegistryError(Exception):
    """A registry that cannot be used; the message names the file, the entry and the field."""


# OpenAI's limit of inputs per embeddings request: what a client may send, and so the most any
# one upstream call can need to carry.
MAX_INPUTS = 2048


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hedge_after(value: Any) -> float | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError("must be milliseconds (a number, 0 is off) or 'auto'")
    return float(value)


# Milliseconds without an answer before the same chunk goes to the next route as well; 0 is
# off, `auto` follows the route's recent p95 latency.
HedgeAfter = Annotated[float | Literal["auto"], PlainValidator(_hedge_after)]
Strategy = Literal["failover", "weighted", "least-latency"]


class RoutePolicy(_Strict):
    """Resilience knobs a provider sets and a route may override."""

    timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=2, ge=1, le=10)
    backoff_base_seconds: float = Field(default=0.2, ge=0)
    cooldown_failures: int = Field(default=5, ge=1)
    cooldown_seconds: float = Field(default=30.0, ge=0)
    max_batch_size: int = Field(default=MAX_INPUTS, ge=1, le=MAX_INPUTS)
    max_tokens_per_call: int | None = Field(default=None, ge=1)
    max_concurrency_per_request: int = Field(default=4, ge=1)
    # Routing resilience (docs/resilience.md, "Resilience"): a call's timeout grows with its
    # work; hedging.
    timeout_per_1k_tokens_seconds: float = Field(default=0.05, ge=0)
    hedge_after_ms: HedgeAfter = 0.0
    hedge_max_ratio: float = Field(default=0.1, ge=0, le=1)
    # Micro-batching (docs/resilience.md, "Micro-batching"): concurrent requests' chunks for the
    # same call shape share one upstream call. A route keeps this many calls in flight before
    # new chunks gather; `batch_window_ms` makes a lone chunk wait that long for company.
    micro_batching: bool = True
    max_inflight_calls: int = Field(default=2, ge=1, le=1024)
    batch_window_ms: float = Field(default=0.0, ge=0, le=1000)


class ProviderConfig(RoutePolicy):
    """What every provider type's configuration shares. Each type subclasses it in its own
    module under app/providers/, with `type: Literal["<name>"]` as the discriminator."""

    type: str
    # Whether this type's routes may carry `options` (which the type validates at start-up).
    route_options: ClassVar[bool] = False
    # Calls in flight to this provider across the whole process.
    max_concurrency: int = Field(default=64, ge=1)
    # The upstream's own request limit (NanoGPT documents 100/s per IP): calls are paced under
    # it across every worker and replica (through Redis where it is configured). None: unpaced.
    max_requests_per_second: float | None = Field(default=None, gt=0)
    # Ask for base64 only where the upstream is known to encode it correctly.
    returns_base64: bool = False

    @property
    def usable(self) -> bool:
        """Can this provider be called at all? (An HTTP upstream needs its API key.)"""
        return True

    @property
    def has_key(self) -> bool:
        return False

    @property
    def key_hint(self) -> str:
        """What to set to make this provider usable, named without any secret."""
        return ""


class RouteOverrides(_Strict):
    timeout_seconds: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    backoff_base_seconds: float | None = Field(default=None, ge=0)
    cooldown_failures: int | None = Field(default=None, ge=1)
    cooldown_seconds: float | None = Field(default=None, ge=0)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_INPUTS)
    max_tokens_per_call: int | None = Field(default=None, ge=1)
    max_concurrency_per_request: int | None = Field(default=None, ge=1)
    timeout_per_1k_tokens_seconds: float | None = Field(default=None, ge=0)
    hedge_after_ms: HedgeAfter | None = None
    hedge_max_ratio: float | None = Field(default=None, ge=0, le=1)
    micro_batching: bool | None = None
    max_inflight_calls: int | None = Field(default=None, ge=1, le=1024)
    batch_window_ms: float | None = Field(default=None, ge=0, le=1000)


InputType = Literal["query", "document"]


class RouteConfig(RouteOverrides):
    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    accepts_token_ids: bool = False
    returns_base64: bool | None = None
    # Share of requests under the `weighted` strategy (relative to the model's other routes).
    weight: float = Field(default=1.0, gt=0)
    # `truncate`: never send `dimensions` upstream; the gateway shortens the full vector itself
    # (Matryoshka models) and L2-renormalises it. For routes that cannot take `dimensions`.
    dimensions_mode: Literal["pass", "truncate"] = "pass"
    # What a request that names no `input_type` is embedded as on this route.
    input_type: InputType | None = None
    # Settings only this route's provider type reads (the local provider's model file, prompts,
    # execution provider), validated by that type at start-up. Part of the model's entry, so
    # changing them changes its cache fingerprint.
    options: dict[str, Any] = Field(default_factory=dict)


class Pricing(_Strict):
    per_million_tokens: float = Field(ge=0)
    currency: Literal["USD"] = "USD"


class ModelConfig(_Strict):
    name: str
    description: str = ""
    owned_by: str
    dimensions: int = Field(ge=1)
    supports_dimensions: bool = False
    max_tokens: int = Field(ge=1)
    pricing: Pricing
    created: int | None = None
    # Keep this model's vectors in the Redis cache (when CACHE_ENABLED and REDIS_URL are set).
    cache: bool = True
    # How a request picks among the routes (docs/resilience.md, "Resilience"); `failover` is
    # registry order.
    strategy: Strategy = "failover"
    routes: list[RouteConfig] = Field(min_length=1)


class RegistryFile(_Strict):
    # Already validated, each by its own type's model (see _parse_providers).
    providers: dict[str, ProviderConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _routes_name_known_providers(self) -> RegistryFile:
        for model_id, model in self.models.items():
            for index, route in enumerate(model.routes):
                if route.provider not in self.providers:
                    known = ", ".join(sorted(self.providers))
                    raise ValueError(
                        f"models.{model_id}.routes.{index}.provider: unknown provider "
                        f"{route.provider!r} (known: {known})"
                    )
                provider = self.providers[route.provider]
                if route.options and not provider.route_options:
                    raise ValueError(
                        f"models.{model_id}.routes.{index}.options: {provider.type} routes "
                        "take no options"
                    )
        return self


class Route:
    """One way to serve a model: a provider, the upstream's model name, and the policy in force."""

    __slots__ = (
        "accepts_token_ids",
        "dimensions_mode",
        "index",
        "input_type",
        "model_id",
        "options",
        "policy",
        "provider",
        "registry_dir",
        "returns_base64",
        "upstream_model",
        "usable",
        "weight",
    )

    def __init__(
        self, model_id: str, index: int, provider: str, config: RouteConfig, base: ProviderConfig
    ) -> None:
        overrides = config.model_dump(include=set(RouteOverrides.model_fields), exclude_none=True)
        self.model_id = model_id
        self.index = index
        self.provider = provider
        self.upstream_model = config.model
        self.accepts_token_ids = config.accepts_token_ids
        self.weight = config.weight
        self.dimensions_mode = config.dimensions_mode
        self.input_type = config.input_type
        self.options = config.options
        # The registry file's directory, set by the Registry: what paths in a route (a local
        # model's directory) are relative to.
        self.registry_dir: Path | None = None
        self.usable = base.usable
        self.returns_base64 = (
            base.returns_base64 if config.returns_base64 is None else config.returns_base64
        )
        self.policy = RoutePolicy(
            **{**base.model_dump(include=set(RoutePolicy.model_fields)), **overrides}
        )

    @property
    def key(self) -> str:
        return f"{self.model_id}#{self.index}:{self.provider}"


class Model:
    __slots__ = (
        "config",
        "created",
        "fingerprint",
        "id",
        "missing_keys",
        "routes",
        "usable_routes",
    )

    def __init__(
        self,
        model_id: str,
        config: ModelConfig,
        routes: list[Route],
        created: int,
        providers: Mapping[str, ProviderConfig],
    ) -> None:
        self.id = model_id
        self.config = config
        self.routes = routes
        # Routes whose provider lacks its key are never called; a model with none is not offered.
        self.usable_routes = [route for route in routes if route.usable]
        self.missing_keys = sorted({providers[r.provider].key_hint for r in routes if not r.usable})
        self.created = config.created if config.created is not None else created
        # Changes whenever the model's registry entry does, so cached vectors of an old entry
        # (another upstream model, another width) are never served for the new one.
        self.fingerprint = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]

    @property
    def available(self) -> bool:
        return bool(self.usable_routes)


class Registry:
    def __init__(self, source: str, providers: dict[str, ProviderConfig], models: dict[str, Model]):
        self.source = source
        self.providers = providers
        self.models = models
        here = Path(source).resolve().parent
        for model in models.values():
            for route in model.routes:
                route.registry_dir = here

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def available(self) -> list[Model]:
        """The models a client is offered: those with at least one route that can be called."""
        return [model for model in self.models.values() if model.available]
