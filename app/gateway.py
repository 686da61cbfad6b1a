"""The long-lived parts one process serves with, built from settings and the registry."""

from __future__ import annotations

from dataclasses import dataclass

from app.api.auth import Authenticator
from app.providers import Provider
from app.registry import Registry
from app.routing import Router
from app.settings import Settings


@dataclass
class Gateway:
    settings: Settings
    registry: Registry
    auth: Authenticator
    providers: dict[str, Provider]
    router: Router

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
