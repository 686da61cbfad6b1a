"""The cache's Redis traffic against a real redis-server: concurrent requests' lookups share
MGETs (each still gets exactly its own items) and a write batch is one command."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import redis

from app.state.cache import CachedItem, EmbeddingCache
from app.state.redis_client import connect

DIMS = 8


def calls(server_url: str, command: str) -> int:
    stats = redis.Redis.from_url(server_url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def item(n: int) -> CachedItem:
    return CachedItem(np.full(DIMS, float(n), dtype=np.float32), n)


async def test_concurrent_lookups_share_mgets_and_each_gets_its_own_items(redis_server):
    prefix = f"egw:reads-{time.monotonic_ns()}:"
    cache = EmbeddingCache(
        connect(redis_server.url, 1.0), prefix=prefix, ttl_seconds=60, timeout=1.0
    )
    await cache.set_many({f"k{n}": item(n) for n in range(0, 40, 2)})  # the even ones exist
    sets_before, mgets_before = calls(redis_server.url, "evalsha"), calls(redis_server.url, "mget")
    lookups = [[f"k{n}", f"k{n + 1}"] for n in range(0, 40, 2)]
    found = await asyncio.gather(*(cache.get_many(keys, DIMS) for keys in lookups))
    mgets = calls(redis_server.url, "mget") - mgets_before
    assert 1 <= mgets < len(lookups) / 2  # the first goes alone, the rest queue behind it
    for keys, items in zip(lookups, found, strict=True):
        even, odd = items
        assert odd is None
        assert even is not None and even.tokens == int(keys[0][1:])
        assert even.vector.tolist() == [float(keys[0][1:])] * DIMS
    assert calls(redis_server.url, "evalsha") == sets_before  # reads never wrote


async def test_a_write_batch_is_one_script_call(redis_server):
    prefix = f"egw:writes-{time.monotonic_ns()}:"
    cache = EmbeddingCache(
        connect(redis_server.url, 1.0), prefix=prefix, ttl_seconds=60, timeout=1.0
    )
    await cache.set_many({"warm": item(1)})  # the script is loaded once
    scripts = calls(redis_server.url, "evalsha")
    await cache.set_many({f"w{n}": item(n) for n in range(100)})
    # Redis counts the script's own SETs as SET calls: one EVALSHA carried all 100.
    assert calls(redis_server.url, "evalsha") == scripts + 1
    client = redis.Redis.from_url(redis_server.url)
    assert 55 <= client.ttl(f"{prefix}w7") <= 60
    found = await cache.get_many([f"w{n}" for n in range(100)], DIMS)
    assert [f.tokens if f else None for f in found] == list(range(100))
