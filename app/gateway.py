"""The long-lived parts one process serves with, built from settings and the registry."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.api.auth import Authenticator
from app.providers import Provider
from app.ratelimit import RateLimiter
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
    limiter: RateLimiter | None = None  # None: RATE_LIMIT_PER_SECOND is 0
    redis: Redis | None = None  # None: REDIS_URL is unset

    async def aclose(self) -> None:
        try:
            for provider in self.providers.values():
                await provider.aclose()
        finally:
            if self.limiter is not None:
                await self.limiter.aclose()
            if self.redis is not None:
                await self.redis.aclose()
