"""The long-lived services one process serves with (a container, built from settings and the
registry by app/runtime/build.py), which the HTTP layer reaches through the lifespan state
(`app.api.context.lifespan_state`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.auth.callers import Authenticator
from app.auth.throttle import AuthFailureThrottle
from app.batches.service import Batches
from app.config.registry import Registry
from app.config.settings import Settings
from app.core.embedder import Embedder
from app.core.routing.router import Router
from app.core.serving import Serving
from app.keys.policy import KeyPolicies
from app.keys.service import ManagedKeys
from app.providers import Provider
from app.state.batched_writes import BatchedWrites
from app.state.rate_limits import RateLimiter
from app.state.redis_client import RedisClient
from app.state.usage_ledger import UsageLedger


@dataclass
class Services:
    settings: Settings
    auth: Authenticator
    # Registry, providers and router: one reference, swapped whole by a reload
    # (app/runtime/reload.py).
    serving: Serving
    batches: Batches  # the Batch API: its stores, files and batches
    limiter: RateLimiter | None = None  # None: RATE_LIMIT_PER_SECOND is 0
    redis: RedisClient | None = None  # None: REDIS_URL is unset
    keys: ManagedKeys | None = None  # None: no key store (no Redis, no admin token, no KEYS_DB)
    key_policies: KeyPolicies | None = None  # with keys: their limits, budgets and spend
    auth_failures: AuthFailureThrottle | None = None  # None: AUTH_FAILURES_PER_MINUTE is 0
    usage: UsageLedger = field(default_factory=lambda: UsageLedger(None, report_timeout=5.0))

    def background_writers(self) -> list[BatchedWrites[Any]]:
        """What the lifespan runs in the background: the usage ledger, and managed keys' spend."""
        writers: list[BatchedWrites[Any]] = [self.usage]
        if self.key_policies is not None:
            writers.append(self.key_policies.spend)
        return writers

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
            await self.usage.aclose()  # one last write; says what it could not write
            await self.serving.aclose()
        finally:
            await self.batches.aclose()
            if self.limiter is not None:
                await self.limiter.aclose()
            if self.key_policies is not None:
                await self.key_policies.aclose()
            if self.keys is not None:
                await self.keys.aclose()
            if self.auth_failures is not None:
                await self.auth_failures.aclose()
            if self.redis is not None:
                await self.redis.aclose()
