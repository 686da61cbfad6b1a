"""The provider types the registry knows: one entry per type name. Adding a provider type is
one module beside this one and one line here (plus a fake in tests/ and a section in
docs/providers.md)."""

from __future__ import annotations

from app.config.registry import ProviderConfig
from app.providers.aiml import AimlProvider
from app.providers.azure_openai import AzureOpenAIProvider
from app.providers.base import ProviderType
from app.providers.cohere import CohereProvider
from app.providers.gemini import GeminiProvider
from app.providers.local import LocalProvider
from app.providers.nanogpt import NanoGPTProvider
from app.providers.nugen import NugenProvider
from app.providers.openai import OpenAIProvider
from app.providers.voyage import VoyageProvider

PROVIDER_TYPES: dict[str, ProviderType] = {
    "nanogpt": NanoGPTProvider,
    "aiml": AimlProvider,
    "nugen": NugenProvider,
    "openai": OpenAIProvider,
    "azure_openai": AzureOpenAIProvider,
    "cohere": CohereProvider,
    "voyage": VoyageProvider,
    "gemini": GeminiProvider,
    "local": LocalProvider,
}


def config_types() -> dict[str, type[ProviderConfig]]:
    """Each type name's config model, from which the registry builds its discriminated union."""
    return {name: cls.config_type for name, cls in PROVIDER_TYPES.items()}


def env_names() -> set[str]:
    """Every env var a provider type documents: its key's and its `${VAR}` defaults'."""
    names: set[str] = set()
    for config_type in config_types().values():
        key_env = getattr(config_type, "key_env", "")
        if key_env:
            names.add(key_env)
        names.update(getattr(config_type, "env_defaults", {}))
    return names
