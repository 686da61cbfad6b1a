"""Which batch store and object store a gateway uses: the store in Redis with REDIS_URL, else in
the SQLite file BATCH_DB (beside KEYS_DB); files in BATCH_STORAGE (a directory, or S3)."""

from __future__ import annotations

from collections.abc import Callable

from app.batches.redis_store import RedisBatchStore
from app.batches.service import Batches
from app.batches.sqlite_store import SQLiteBatchStore
from app.batches.store import BatchStore
from app.config.settings import Settings
from app.state.object_store import ObjectStore
from app.state.redis_client import RedisClient


def build_batches(
    settings: Settings, redis: RedisClient | None, clock: Callable[[], float]
) -> Batches:
    """No I/O: the stores connect (and the SQLite file and the directory appear) on first use."""
    timeout = settings.BATCH_STORE_TIMEOUT_SECONDS
    store: BatchStore
    if redis is not None:
        store = RedisBatchStore(redis, prefix=settings.BATCH_KEY_PREFIX, timeout=timeout)
    else:
        store = SQLiteBatchStore(settings.BATCH_DB, timeout=timeout)
    return Batches(store, ObjectStore(settings), settings, clock)
