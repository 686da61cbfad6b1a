"""The long-lived services one process serves with (a container, built from settings and the
registry by app/main.py), which the HTTP layer reaches as `app.state.gateway`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from app.auth.callers import Authenticator
from app.auth.throttle import AuthFailureThrottle
from app.batches.build import build_batches
from app.batches.service import Batches
from app.config.registry import Registry
from app.config.settings import Settings
from app.core.embedder import Embedder
from app.core.routing.router import Router
from app.core.serving import Serving
from app.keys.checks import KeyChecks
from app.keys.service import ManagedKeys
from app.providers import Provider
from app.state.rate_limits import RateLimiter
from app.state.usage_ledger import UsageLedger


@dataclass
class Services:
    settings: Settings
    auth: Authenticator
    # Registry, providers and router: one reference, swapped whole by a reload
    # (app/runtime/reload.py).
    serving: Serving
    limiter: RateLimiter | None = None  # None: RATE_LIMIT_PER_SECOND is 0
    redis: Redis | None = None  # None: REDIS_URL is unset
    keys: ManagedKeys | None = None  # None: no key store (no Redis, no admin token, no KEYS_DB)
    key_checks: KeyChecks | None = None  # with keys: their limits and budgets
    auth_failures: AuthFailureThrottle | None = None  # None: AUTH_FAILURES_PER_MINUTE is 0
    # Wall time for the Batch API's timestamps and expiry; tests inject a clock they move.
    wall_clock: Callable[[], float] = time.time
    usage: UsageLedger = field(init=False)
    batches: Batches = field(init=False)  # the Batch API: its stores, files and batches

    def __post_init__(self) -> None:
        settings = self.settings
        self.usage = UsageLedger(
            self.redis, prefix=settings.USAGE_KEY_PREFIX, timeout=settings.CACHE_TIMEOUT_MS / 1000
        )
        self.batches = build_batches(settings, self.redis, self.wall_clock)

    # Reads of the current snapshot, for code that needs one part of it once. A request that
    # uses several parts takes `serving` once instead, so a reload cannot mix two registries.
    @property
    def registry(self) -> Registry:
        return self.serving.registry

    @property
    def providers(self) -> dict[str, Provider]:
        return self.serving.providers

    @property
    def router(self) -> Router:
        return self.serving.router

    @property
    def embedder(self) -> Embedder:
        return self.serving.embedder

    def swap(self, serving: Serving) -> Serving:
        """Serve new requests from `serving`; returns the one it replaces."""
        old, self.serving = self.serving, serving
        return old

    async def aclose(self) -> None:
        try:
            if self.embedder.cache is not None:
                await self.embedder.cache.flush()  # queued cache writes: none lost on a stop
            await self.usage.flush()
            await self.serving.aclose()
        finally:
            await self.batches.aclose()
            if self.limiter is not None:
                await self.limiter.aclose()
            if self.key_checks is not None:
                await self.key_checks.aclose()
            if self.keys is not None:
                await self.keys.aclose()
            if self.auth_failures is not None:
                await self.auth_failures.aclose()
            if self.redis is not None:
                await self.redis.aclose()
