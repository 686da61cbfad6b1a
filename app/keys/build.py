"""Which key store a gateway (or the CLI) uses: Redis when REDIS_URL is set, else SQLite."""

from __future__ import annotations

from pathlib import Path

from app.config.registry import Registry
from app.config.settings import Settings
from app.keys.checks import KeyChecks
from app.keys.policy import KeyPolicies
from app.keys.redis_store import RedisKeyStore, hold_key, spend_key
from app.keys.service import ManagedKeys
from app.keys.spend import SpendLedger
from app.keys.sqlite_store import SQLiteKeyStore
from app.keys.store import KeyStore
from app.state.redis_client import RedisClient

# A reservation outlives the longest request by this much before it frees itself.
HOLD_MARGIN_SECONDS = 30.0


def build_keys(
    settings: Settings, redis: RedisClient | None, registry: Registry, *, always: bool = False
) -> ManagedKeys | None:
    """None when there is nothing to serve: no Redis, no admin token and no KEYS_DB file yet
    (so a gateway that never uses managed keys never creates the file). `always`: the CLI."""
    store: KeyStore
    if redis is not None:
        store = RedisKeyStore(
            redis, prefix=settings.KEYS_KEY_PREFIX, timeout=settings.CACHE_TIMEOUT_MS / 1000
        )
        backend = "Redis"
    elif always or settings.GATEWAY_ADMIN_TOKEN is not None or Path(settings.KEYS_DB).exists():
        store = SQLiteKeyStore(settings.KEYS_DB, timeout=settings.KEYS_DB_TIMEOUT_MS / 1000)
        backend = f"SQLite file {settings.KEYS_DB}"
    else:
        return None
    return ManagedKeys(
        store,
        cache_seconds=settings.KEYS_CACHE_SECONDS,
        model_exists=lambda model_id: registry.get(model_id) is not None,
        backend=backend,
    )


def build_key_checks(settings: Settings, redis: RedisClient | None, keys: ManagedKeys) -> KeyChecks:
    """With Redis the key store is Redis too (`build_keys`), so one script sees both."""
    return KeyChecks(
        redis,
        keys,
        prefix=settings.RATE_LIMIT_KEY_PREFIX + "key:",
        spend_key=lambda key_id: spend_key(settings.KEYS_KEY_PREFIX, key_id),
        hold_key=lambda key_id: hold_key(settings.KEYS_KEY_PREFIX, key_id),
        timeout=settings.REDIS_TIMEOUT_MS / 1000,
        store_timeout=settings.CACHE_TIMEOUT_MS / 1000,  # the key store's own bound
    )


def build_key_policies(
    settings: Settings, redis: RedisClient | None, keys: ManagedKeys
) -> KeyPolicies:
    """Limits, budgets and spend of managed keys, for the embeddings endpoint and the Batch API."""
    store_timeout = (
        settings.CACHE_TIMEOUT_MS / 1000
        if redis is not None
        else settings.KEYS_DB_TIMEOUT_MS / 1000
    )
    return KeyPolicies(
        keys,
        build_key_checks(settings, redis, keys),
        SpendLedger(keys.store),
        hold_seconds=settings.REQUEST_TIMEOUT_SECONDS + HOLD_MARGIN_SECONDS,
        settle_timeout=store_timeout,
    )
