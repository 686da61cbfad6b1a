"""The resolved configuration, printable: every secret masked, for logs and `check-config`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.config.registry import Registry
from app.config.settings import Settings


def settings_summary(settings: Settings) -> dict[str, Any]:
    # JSON mode renders every SecretStr as asterisks; the Redis URL's password is not one.
    summary = settings.model_dump(mode="json")
    summary["GATEWAY_API_KEYS"] = f"{len(settings.GATEWAY_API_KEYS)} key(s), masked"
    # The .env file's other names (provider keys, mostly): never printed, whatever they hold.
    for name in settings.extra_names:
        summary[name] = "**********"
    if settings.REDIS_URL:
        summary["REDIS_URL"] = redacted(settings.REDIS_URL)
    return summary


def model_table(registry: Registry) -> list[str]:
    """One line per model: ID, width, and its routes in order, with whether each has a key."""
    rows = [("MODEL", "DIMS", "ROUTES (provider:upstream model [key])")]
    for model in registry.models.values():
        routes = []
        for route in model.routes:
            provider = registry.providers[route.provider]
            if provider.has_key:
                key = "key set"
            else:
                key = "no key needed" if provider.usable else f"no key: set {provider.key_hint}"
            routes.append(f"{route.provider}:{route.upstream_model} [{key}]")
        rows.append((model.id, str(model.config.dimensions), " -> ".join(routes)))
    width = max(len(row[0]) for row in rows)
    return [f"{row[0]:<{width}}  {row[1]:>5}  {row[2]}" for row in rows]


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
