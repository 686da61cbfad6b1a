"""Upstream adapters, one module per provider, built from the registry by type name."""

from __future__ import annotations

from app.providers.aiml import AimlProvider
from app.providers.base import (
    Failure,
    Provider,
    UpstreamCall,
    UpstreamError,
    UpstreamResult,
)
from app.providers.local import LocalProvider
from app.providers.nanogpt import NanoGPTProvider
from app.providers.nugen import NugenProvider
from app.registry import Registry, RegistryError

PROVIDER_CLASSES = {
    "nanogpt": NanoGPTProvider,
    "aiml": AimlProvider,
    "nugen": NugenProvider,
    "local": LocalProvider,
}

__all__ = [
    "PROVIDER_CLASSES",
    "Failure",
    "Provider",
    "UpstreamCall",
    "UpstreamError",
    "UpstreamResult",
    "build_providers",
]


def build_providers(registry: Registry) -> dict[str, Provider]:
    for model in registry.models.values():
        for route in model.routes:
            config = registry.providers[route.provider]
            cls = PROVIDER_CLASSES[config.type]
            if route.accepts_token_ids and not getattr(cls, "supports_token_ids", True):
                raise RegistryError(
                    f"{registry.source}: models.{model.id}.routes.{route.index}."
                    f"accepts_token_ids: {cls.display_name} takes strings only"
                )
            # Providers that can tell at start-up that a route cannot work (a local model that
            # does not exist, the wrong width) say so here rather than on the first request.
            check_route = getattr(cls, "check_route", None)
            problem = check_route(model, route, config) if check_route else None
            if problem:
                raise RegistryError(f"{registry.source}: {problem}")
    return {
        name: PROVIDER_CLASSES[config.type](name, config)
        for name, config in registry.providers.items()
    }
