"""The one way the gateway connects to Redis: short timeouts, one immediate retry."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(url: str, connect_timeout: float) -> Redis:
    """A lazily connecting client; nothing is sent until the first command.

    It has no socket timeout: every caller bounds its own calls with `asyncio.timeout`. redis-py
    enforces a socket timeout with `asyncio.wait_for`, a task per command sent: ~4 % of the
    gateway's CPU when the rate limiter made one call per request.
    """
    return Redis.from_url(
        url,
        socket_timeout=None,  # redis-py 8 would otherwise default to 5 s
        socket_connect_timeout=connect_timeout,
        # Pooled connections are dead after a Redis restart: one immediate retry on a fresh
        # connection saves that first request from falling back. Timeouts are not retried:
        # a hung Redis would only cost the request twice as long.
        retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
    )
