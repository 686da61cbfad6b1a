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

from app.auth.callers import Authenticator
from app.auth.throttle import WINDOW_SECONDS as AUTH_FAILURE_WINDOW
from app.auth.throttle import AuthFailureThrottle
from app.batches.build import build_batches
from app.batches.policy import BatchPolicy
from app.batches.runner import BatchRunner
from app.batches.work import RenderError, Work
from app.config.registry import Model, Registry, RegistryError
from app.config.registry_file import load_registry, masked
from app.config.settings import Settings
from app.core.routing.pacing import Pacing
from app.core.routing.router import Router
from app.core.serving import Serving
from app.keys.build import build_key_policies, build_keys
from app.providers import Provider, build_providers
from app.providers.catalog import config_types
from app.runtime.services import Services
from app.state.cache import EmbeddingCache
from app.state.pacing_timeline import RedisTimeline
from app.state.rate_limits import LocalRateLimiter, RateLimiter, RedisRateLimiter
from app.state.redis_client import RedisClient
from app.state.redis_client import connect as connect_redis
from app.state.usage_ledger import UsageBooks, UsageLedger
from app.state.usage_redis import RedisUsageBooks
from app.state.usage_sqlite import SQLiteUsageBooks, usage_path

log = logging.getLogger("app")

# A new Redis connection's own bound. Every caller bounds its whole call (connecting included)
# with its own timeout (REDIS_TIMEOUT_MS, CACHE_TIMEOUT_MS, ...), so this is only a backstop.
# It was REDIS_TIMEOUT_MS (50 ms): on a busy machine a burst that opened new connections failed
# them in 50 ms even for calls allowed 250 ms or more (the key store's), a spurious 503.
CONNECT_TIMEOUT_SECONDS = 1.0


def providers_for(registry: Registry) -> dict[str, Provider]:
    """The registry's providers. A provider type's own checks may quote a value the registry
    interpolated (a key, say): what they raise is masked like every registry error."""
    try:
        return build_providers(registry)
    except RegistryError as exc:
        raise RegistryError(masked(str(exc))) from None


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
    providers = providers_for(registry)
    redis = None
    if settings.REDIS_URL:
        redis = connect_redis(settings.REDIS_URL, CONNECT_TIMEOUT_SECONDS, settings.redis_options)
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
        key_policies=build_key_policies(settings, redis, keys) if keys is not None else None,
        auth_failures=build_auth_failure_throttle(settings, redis),
        usage=build_usage(settings, redis),
        batches=build_batches(settings, redis, wall_clock),
    )
    return services


class _CurrentRegistry(Registry):
    """A registry that is always the gateway's current one, for what is built before it."""

    def __init__(self, current: Callable[[], Registry]) -> None:  # the one method keys call
        self._current = current

    def get(self, model_id: str) -> Model | None:
        return self._current().get(model_id)


def build_pacing(settings: Settings, redis: RedisClient | None) -> Pacing:
    """Providers' `max_requests_per_second` timelines: in Redis when there is one, else each
    worker paces at its share of the rate."""
    if redis is None:
        return Pacing(None, local_share=settings.WORKERS)
    timeline = RedisTimeline(
        redis, key_prefix=settings.RATE_LIMIT_KEY_PREFIX, timeout=settings.REDIS_TIMEOUT_MS / 1000
    )
    return Pacing(timeline, local_share=settings.WORKERS)


def build_limiter(settings: Settings, redis: RedisClient | None) -> RateLimiter | None:
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
    settings: Settings, redis: RedisClient | None
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


def build_usage(settings: Settings, redis: RedisClient | None) -> UsageLedger:
    """Usage in Redis, else in a SQLite file beside KEYS_DB (every worker shares it; if its
    directory cannot be written, `UsageLedger.start` keeps usage in each process instead)."""
    timeout = settings.USAGE_REPORT_TIMEOUT_SECONDS
    books: UsageBooks | None
    if redis is not None:
        books = RedisUsageBooks(
            redis, prefix=settings.USAGE_KEY_PREFIX, timeout=settings.CACHE_TIMEOUT_MS / 1000
        )
    else:
        books = SQLiteUsageBooks(
            usage_path(settings.KEYS_DB), timeout=settings.KEYS_DB_TIMEOUT_MS / 1000
        )
    return UsageLedger(books, report_timeout=timeout)


def build_cache(settings: Settings, redis: RedisClient | None) -> EmbeddingCache | None:
    if redis is None or not settings.CACHE_ENABLED:
        return None
    return EmbeddingCache(
        redis,
        prefix=settings.CACHE_KEY_PREFIX,
        ttl_seconds=settings.CACHE_TTL_SECONDS,
        timeout=settings.CACHE_TIMEOUT_MS / 1000,
        max_pending=settings.CACHE_WRITE_QUEUE,
    )


def build_batch_runner(services: Services, render: RenderError) -> BatchRunner:
    """The Batch API's workers in this process, embedding through `services` (its current
    serving snapshot at each use) with the creating key's policy; `render` is the HTTP layer's
    error table, for lines that fail (handed down: the batches layer cannot import it)."""
    policy = BatchPolicy(services.keys, services.key_policies, services.usage)
    return BatchRunner(Work(services.batches, services, render, policy))
