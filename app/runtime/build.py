"""Building the gateway's services from settings and the registry: what `create_app` (app/main.py),
the CLI and a reload (app/runtime/reload.py) share. No I/O here: clients connect on first use.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from redis.asyncio import Redis

from app.auth.callers import Authenticator
from app.auth.throttle import WINDOW_SECONDS as AUTH_FAILURE_WINDOW
from app.auth.throttle import AuthFailureThrottle
from app.config.registry import Model, Registry
from app.config.registry_file import load_registry
from app.config.settings import Settings
from app.core.routing.pacing import Pacing
from app.core.routing.router import Router
from app.core.serving import Serving
from app.keys.build import build_key_checks, build_keys
from app.providers import build_providers
from app.providers.catalog import config_types
from app.runtime.services import Services
from app.state.cache import EmbeddingCache
from app.state.pacing_timeline import RedisTimeline
from app.state.rate_limits import LocalRateLimiter, RateLimiter, RedisRateLimiter
from app.state.redis_client import connect as connect_redis

log = logging.getLogger("app")


def read_registry(path: str | Path, environ: Mapping[str, str]) -> Registry:
    """The registry file at `path`, with every provider type the gateway knows."""
    return load_registry(path, environ, config_types())


def build_services(
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> Services:
    registry = read_registry(settings.MODELS_CONFIG, settings.interpolation_env(dict(os.environ)))
    providers = build_providers(registry)
    timeout = settings.REDIS_TIMEOUT_MS / 1000
    redis: Redis | None = None
    if settings.REDIS_URL:
        # Typed as the standalone client the stores are written against: a Cluster's speaks the
        # same commands (app/state/redis_client.py says what differs, and the stores handle it).
        redis = cast(Redis, connect_redis(settings.REDIS_URL, timeout, settings.redis_options))
    router = Router(registry, providers, clock=clock, rng=rng, pacing=build_pacing(settings, redis))
    serving = Serving(registry, providers, router, build_cache(settings, redis))
    # Key policies name models: checked against whatever registry is current, reloads included.
    keys = build_keys(settings, redis, _CurrentRegistry(lambda: services.registry))
    services = Services(
        settings=settings,
        serving=serving,
        auth=Authenticator(
            settings.GATEWAY_API_KEYS,
            settings.GATEWAY_INTERNAL_TOKEN,
            keys,
            enabled=settings.auth_enabled,
        ),
        limiter=build_limiter(settings, redis),
        redis=redis,
        keys=keys,
        key_checks=build_key_checks(settings, redis, keys) if keys is not None else None,
        auth_failures=build_auth_failure_throttle(settings, redis),
        wall_clock=wall_clock,
    )
    return services


class _CurrentRegistry(Registry):
    """A registry that is always the gateway's current one, for what is built before it."""

    def __init__(self, current: Callable[[], Registry]) -> None:  # the one method keys call
        self._current = current

    def get(self, model_id: str) -> Model | None:
        return self._current().get(model_id)


def build_pacing(settings: Settings, redis: Redis | None) -> Pacing:
    """Providers' `max_requests_per_second` timelines: in Redis when there is one, else each
    worker paces at its share of the rate."""
    if redis is None:
        return Pacing(None, local_share=settings.WORKERS)
    timeline = RedisTimeline(
        redis, key_prefix=settings.RATE_LIMIT_KEY_PREFIX, timeout=settings.REDIS_TIMEOUT_MS / 1000
    )
    return Pacing(timeline, local_share=settings.WORKERS)


def build_limiter(settings: Settings, redis: Redis | None) -> RateLimiter | None:
    """No I/O here: clients connect on first use."""
    limit = settings.RATE_LIMIT_PER_SECOND
    if limit == 0:
        return None
    if settings.REDIS_URL is None:
        return LocalRateLimiter(limit)
    return RedisRateLimiter(
        settings.REDIS_URL,
        limit,
        key_prefix=settings.RATE_LIMIT_KEY_PREFIX,
        timeout=settings.REDIS_TIMEOUT_MS / 1000,
        client=redis,
    )


def build_auth_failure_throttle(
    settings: Settings, redis: Redis | None
) -> AuthFailureThrottle | None:
    """The same sliding log as the request limit, over a minute, under its own key prefix.

    Not started like the request limiter: its script loads on first use, and one start-up line
    about where limits are counted is enough. With auth off nothing can fail to authenticate.
    """
    limit = settings.AUTH_FAILURES_PER_MINUTE
    if limit == 0 or not settings.auth_enabled:
        return None
    limiter: RateLimiter
    if settings.REDIS_URL is None:
        limiter = LocalRateLimiter(limit, window=AUTH_FAILURE_WINDOW)
    else:
        limiter = RedisRateLimiter(
            settings.REDIS_URL,
            limit,
            key_prefix=settings.RATE_LIMIT_KEY_PREFIX + "authfail:",
            timeout=settings.REDIS_TIMEOUT_MS / 1000,
            client=redis,
            window=AUTH_FAILURE_WINDOW,
        )
    return AuthFailureThrottle(limiter)


async def start_limiter(settings: Settings, limiter: RateLimiter | None) -> None:
    limit = settings.RATE_LIMIT_PER_SECOND
    if limiter is None:
        log.info("rate limit off (RATE_LIMIT_PER_SECOND=0)")
        return
    log.info("rate limit: %d requests per second per client IP on the API routes", limit)
    if isinstance(limiter, LocalRateLimiter) and settings.WORKERS > 1:
        log.warning(
            "REDIS_URL is unset, so rate limits are counted per process: with %d workers a "
            "client may get up to %d requests per second",
            settings.WORKERS,
            limit * settings.WORKERS,
        )
    elif isinstance(limiter, LocalRateLimiter):
        log.info("REDIS_URL is unset, so rate limits are counted per process (in memory)")
    await limiter.start()


def build_cache(settings: Settings, redis: Redis | None) -> EmbeddingCache | None:
    if redis is None or not settings.CACHE_ENABLED:
        return None
    return EmbeddingCache(
        redis,
        prefix=settings.CACHE_KEY_PREFIX,
        ttl_seconds=settings.CACHE_TTL_SECONDS,
        timeout=settings.CACHE_TIMEOUT_MS / 1000,
        max_pending=settings.CACHE_WRITE_QUEUE,
    )
