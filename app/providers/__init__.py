"""Upstream adapters, one module per provider type, built from the registry by type name."""

from __future__ import annotations

from app.config.registry import Model, ProviderConfig, Registry, RegistryError, Route
from app.providers.base import (
    Failure,
    Provider,
    ProviderType,
    UpstreamCall,
    UpstreamError,
    UpstreamResult,
)
from app.providers.catalog import PROVIDER_TYPES

__all__ = [
    "PROVIDER_TYPES",
    "Failure",
    "Provider",
    "ProviderType",
    "UpstreamCall",
    "UpstreamError",
    "UpstreamResult",
    "build_providers",
]


def build_providers(registry: Registry) -> dict[str, Provider]:
    for model in registry.models.values():
        for route in model.routes:
            config = registry.providers[route.provider]
            cls = PROVIDER_TYPES[config.type]
            problem = _route_problem(cls, model, route, config)
            if problem:
                raise RegistryError(f"{registry.source}: {problem}")
    return {
        name: PROVIDER_TYPES[config.type](name, config)
        for name, config in registry.providers.items()
    }


def _route_problem(
    cls: ProviderType, model: Model, route: Route, config: ProviderConfig
) -> str | None:
    """Why a route cannot work with its provider, found at start-up rather than on a request."""
    where = f"models.{model.id}.routes.{route.index}"
    capabilities = cls.capabilities(config)
    if route.accepts_token_ids and not capabilities.token_ids:
        return f"{where}.accepts_token_ids: {cls.display_name} takes strings only"
    limit = capabilities.max_inputs
    if limit is not None and route.policy.max_batch_size > limit:
        return (
            f"{where}.max_batch_size: {cls.display_name} takes at most {limit} inputs per call "
            f"(set max_batch_size: {limit} or less on the provider or the route)"
        )
    if route.returns_base64 and not capabilities.base64:
        return (
            f"{where}.returns_base64: {cls.display_name} does not send base64 vectors; remove "
            "returns_base64 from the provider or the route"
        )
    if route.input_type is not None and not capabilities.input_type:
        return (
            f"{where}.input_type: {cls.display_name} embeds queries and documents alike, so "
            "input_type has no effect here; remove it"
        )
    # The type's own checks (a local model that does not exist, the wrong width).
    problem = cls.check_route(model, route, config)
    if problem:
        return problem
    if (
        model.config.supports_dimensions
        and route.dimensions_mode == "pass"
        and not capabilities.dimensions
    ):
        return (
            f"{where}.dimensions_mode: {cls.display_name} cannot shorten vectors; set "
            "dimensions_mode: truncate (the gateway shortens them) or supports_dimensions: false"
        )
    return None
