"""The one way the gateway connects to Redis: standalone, Cluster or Sentinel, short timeouts,
one immediate retry.

Every user of Redis gets its client from `connect`, and whatever the mode the client speaks the
same commands. What differs in a Cluster is where keys live: a command (or script) touching
several keys needs them in one hash slot. `slot_of` and `by_slot` let callers group their keys
per slot; `mget` reads many keys in any mode.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from app.config.settings import RedisOptions

log = logging.getLogger("app.redis")

# Both speak the same commands; only a Cluster needs a multi-key call's keys in one slot.
RedisClient: TypeAlias = Redis | RedisCluster
T = TypeVar("T")
# What a Redis call can raise when Redis (not the caller) is at fault: every caller fails open on
# these. A Cluster's own errors (no node for a slot, say) are not RedisError subclasses.
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


def connect(url: str, connect_timeout: float, options: RedisOptions | None = None) -> RedisClient:
    """A lazily connecting client; nothing is sent until the first command.

    It has no socket timeout: every caller bounds its own calls with `asyncio.timeout`. redis-py
    enforces a socket timeout with `asyncio.wait_for`, a task per command sent: ~4 % of the
    gateway's CPU when the rate limiter made one call per request.
    """
    options = options or RedisOptions()
    common: dict[str, Any] = {
        "socket_timeout": None,  # redis-py 8 would otherwise default to 5 s
        "socket_connect_timeout": connect_timeout,
        # Pooled connections are dead after a Redis restart (or a failover): one immediate
        # retry on a fresh connection saves that first request from falling back. Timeouts
        # are not retried: a hung Redis would only cost the request twice as long.
        "retry": Retry(NoBackoff(), 1, (RedisConnectionError,)),
    }
    if options.password is not None:
        common["password"] = options.password
    tls = _tls(url, options)
    if options.mode == "cluster":
        # A failover shows as connection errors, then MOVED: a few quick retries follow the
        # new map, and every caller's own timeout bounds them.
        common["retry"] = Retry(NoBackoff(), 3)
        return RedisCluster.from_url(url, **common, **tls)
    if options.mode == "sentinel":
        return _sentinel_master(url, options, common, tls)
    return Redis.from_url(url, **common, **tls)


def _tls(url: str, options: RedisOptions) -> dict[str, Any]:
    if urlsplit(url).scheme != "rediss":
        return {}
    tls: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if options.ca_file:
        tls["ssl_ca_certs"] = options.ca_file
    return tls


def _sentinel_master(
    url: str, options: RedisOptions, common: dict[str, Any], tls: dict[str, Any]
) -> Redis:
    """The master that the sentinels name now; after a failover, the next connection asks
    them again (a connection to a demoted master fails at once, and the retry reconnects)."""
    parts = urlsplit(url)
    master: dict[str, Any] = dict(common)
    if parts.username:
        master["username"] = parts.username
    if parts.password and options.password is None:
        master["password"] = parts.password
    database = parts.path.strip("/")
    if database:
        master["db"] = int(database)
    if tls:
        master["ssl"] = True
        master.update(tls)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_connect_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
    }
    if options.sentinel_password is not None:
        sentinel_kwargs["password"] = options.sentinel_password
    if tls:
        sentinel_kwargs["ssl"] = True
        sentinel_kwargs.update(tls)
    sentinel = Sentinel(list(options.sentinels), sentinel_kwargs=sentinel_kwargs)
    return cast(Redis, sentinel.master_for(options.sentinel_master, **master))


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def slot_of(key: str) -> int:
    """The key's hash slot (only its `{tag}` counts when it has one), as a Cluster places it."""
    return key_slot(key.encode())


def hash_tag(name: str) -> str:
    """What decides `name`'s slot: its first non-empty `{...}`, else all of it. A key built as
    `...{hash_tag(name)}` lands in `name`'s slot."""
    start = name.find("{")
    if start >= 0:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name[start + 1 : end]
    return name


def by_slot(client: object, items: Iterable[T], key: Callable[[T], str]) -> list[list[T]]:
    """`items` grouped per hash slot of `key(item)`, order kept within a group; one group when
    `client` is not a Cluster (any multi-key call is fine there)."""
    items = list(items)
    if not is_cluster(client):
        return [items] if items else []
    groups: dict[int, list[T]] = {}
    for item in items:
        groups.setdefault(slot_of(key(item)), []).append(item)
    return list(groups.values())


async def mget(client: RedisClient, keys: list[str]) -> list[bytes | None]:
    """MGET in any mode: a Cluster reads per slot, in parallel, answers in `keys` order.
    (Bytes: the gateway's clients never decode responses.)"""
    if isinstance(client, RedisCluster):
        return cast(list[bytes | None], await client.mget_nonatomic(keys))
    return cast(list[bytes | None], await client.mget(keys))


async def follow_master(client: object, interval: float = 1.0, timeout: float = 1.0) -> None:
    """Sentinel mode: ask the sentinels every `interval` who the master is, and drop every
    connection to the old one as soon as it changes.

    redis-py asks only when it opens a connection, and a `SENTINEL FAILOVER` leaves the old
    master answering as a master until the sentinels demote it (up to ~10 s later, at their
    next INFO): writes made there meanwhile would be lost. Other modes: returns at once.
    """
    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, SentinelConnectionPool):
        return
    while True:
        await asyncio.sleep(interval)
        known = pool.master_address
        try:
            async with asyncio.timeout(timeout):
                now = await pool.sentinel_manager.discover_master(pool.service_name)
        except REDIS_FAILURES as exc:
            log.debug("sentinels not reachable (%s)", type(exc).__name__)
            continue
        if known is not None and now != known:
            log.warning("Redis master moved to %s:%s; reconnecting", *now)
            pool.master_address = now
            await pool.disconnect(inuse_connections=True)
        elif known is None:
            pool.master_address = now
