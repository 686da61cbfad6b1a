"""The model registry: YAML → typed providers, models and routes, validated once at start-up."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

ProviderType = Literal["nanogpt", "aiml", "nugen", "local"]
# Types that call an upstream over HTTP; `local` runs a model inside this process instead.
HTTP_PROVIDER_TYPES: frozenset[str] = frozenset({"nanogpt", "aiml", "nugen"})
# Fields that mean something only to one side; setting them on the other is a mistake to report.
_HTTP_ONLY_FIELDS = ("base_url", "api_key", "max_response_bytes")
_LOCAL_ONLY_FIELDS = ("threads", "workers", "max_seq_length")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RegistryError(Exception):
    """A registry that cannot be used; the message names the file, the entry and the field."""


class _FieldError(ValueError):
    """A model-level check that blames one field, so the message names it like pydantic's own."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutePolicy(_Strict):
    """Resilience knobs a provider sets and a route may override."""

    timeout_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=2, ge=1, le=10)
    backoff_base_seconds: float = Field(default=0.2, ge=0)
    cooldown_failures: int = Field(default=5, ge=1)
    cooldown_seconds: float = Field(default=30.0, ge=0)
    max_batch_size: int = Field(default=2048, ge=1, le=2048)
    max_tokens_per_call: int | None = Field(default=None, ge=1)
    max_concurrency_per_request: int = Field(default=4, ge=1)


class ProviderConfig(RoutePolicy):
    type: ProviderType
    # Required for the HTTP types and refused for `local` (checked in _fields_fit_the_type).
    base_url: str | None = Field(default=None, min_length=1)
    api_key: SecretStr | None = None
    # Which env var the key came from, so errors can say what to check without the key.
    api_key_env: str | None = None
    # Calls in flight to this provider across the whole process.
    max_concurrency: int = Field(default=64, ge=1)
    # Ask for base64 only where the upstream is known to encode it correctly.
    returns_base64: bool = False
    # Cap on one call's decoded 200 body; unset: what the call can need (inputs x dims x 25 B).
    max_response_bytes: int | None = Field(default=None, ge=1024)
    # `local` only. Intra-op threads per inference run, and runs at once: threads x workers is
    # the most cores the model uses, so the defaults leave an HTTP-serving core on small boxes.
    threads: int = Field(default=1, ge=1, le=64)
    workers: int = Field(default=2, ge=1, le=64)
    # `local` only: truncate inputs at this many word pieces; unset means the model's own limit.
    max_seq_length: int | None = Field(default=None, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _blank_key_is_none(cls, data: Any) -> Any:
        key = data.get("api_key") if isinstance(data, dict) else None
        if isinstance(key, str) and not key.strip():
            data = {**data, "api_key": None}
        return data

    @property
    def usable(self) -> bool:
        """Can this provider be called at all? An HTTP upstream needs its API key."""
        return self.type not in HTTP_PROVIDER_TYPES or self.api_key is not None

    @property
    def key_hint(self) -> str:
        """What to set to make this provider usable, named without any secret."""
        return self.api_key_env or "an api_key for this provider in the registry"

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> ProviderConfig:
        if self.type in HTTP_PROVIDER_TYPES:
            if self.base_url is None:
                raise _FieldError("base_url", f"Field required for a {self.type} provider")
            for name in _LOCAL_ONLY_FIELDS:
                if name in self.model_fields_set:
                    raise _FieldError(name, "only a local provider takes this field")
        else:
            for name in _HTTP_ONLY_FIELDS:
                if getattr(self, name) is not None:
                    raise _FieldError(name, "a local provider calls no HTTP API; remove this field")
        return self


class RouteOverrides(_Strict):
    timeout_seconds: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    backoff_base_seconds: float | None = Field(default=None, ge=0)
    cooldown_failures: int | None = Field(default=None, ge=1)
    cooldown_seconds: float | None = Field(default=None, ge=0)
    max_batch_size: int | None = Field(default=None, ge=1, le=2048)
    max_tokens_per_call: int | None = Field(default=None, ge=1)
    max_concurrency_per_request: int | None = Field(default=None, ge=1)


class RouteConfig(RouteOverrides):
    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    accepts_token_ids: bool = False
    returns_base64: bool | None = None


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
    routes: list[RouteConfig] = Field(min_length=1)


class RegistryFile(_Strict):
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
        return self


class Route:
    """One way to serve a model: a provider, the upstream's model name, and the policy in force."""

    __slots__ = (
        "accepts_token_ids",
        "index",
        "model_id",
        "policy",
        "provider",
        "returns_base64",
        "upstream_model",
        "usable",
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

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def available(self) -> list[Model]:
        """The models a client is offered: those with at least one route that can be called."""
        return [model for model in self.models.values() if model.available]


def load_registry(path: str | Path, environ: Mapping[str, str]) -> Registry:
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"{source}: file not found") from exc
    except (OSError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RegistryError(f"{source}: cannot be read as YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{source}: expected a mapping with 'providers' and 'models'")
    interpolated = _interpolate(raw, environ, source, ())
    _remember_key_env(raw, interpolated)
    try:
        parsed = RegistryFile.model_validate(interpolated)
    except ValidationError as exc:
        raise RegistryError(f"{source}: {_describe(exc)}") from None
    created = int(time.time())
    models = {
        model_id: Model(
            model_id,
            config,
            [
                Route(model_id, index, route.provider, route, parsed.providers[route.provider])
                for index, route in enumerate(config.routes)
            ],
            created,
            parsed.providers,
        )
        for model_id, config in parsed.models.items()
    }
    return Registry(source, dict(parsed.providers), models)


def _interpolate(node: Any, environ: Mapping[str, str], source: str, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, environ, source, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, environ, source, (*path, str(i))) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and (environ[name] != "" or default is None):
            return environ[name]
        if default is not None:
            return default
        where = ".".join(path)
        raise RegistryError(
            f"{source}: {where}: environment variable {name} is not set "
            f"(write ${{{name}:-}} to allow it to be empty)"
        )

    return _VAR.sub(substitute, node)


def _remember_key_env(raw: dict[str, Any], interpolated: dict[str, Any]) -> None:
    providers = raw.get("providers")
    if not isinstance(providers, dict):
        return
    for name, entry in providers.items():
        if isinstance(entry, dict) and isinstance(entry.get("api_key"), str):
            match = _VAR.search(entry["api_key"])
            target = interpolated["providers"][name]
            if match and isinstance(target, dict) and "api_key_env" not in target:
                target["api_key_env"] = match.group(1)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            where = f"{where}.{cause.field}" if where else cause.field
            message = cause.message
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
