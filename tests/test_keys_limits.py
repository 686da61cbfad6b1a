"""Per-key token limits: the weighted sliding log, in process (injected clock) and in Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.keys.limits import KeyLimits, LocalTokenLimiter
from app.redis_client import connect


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_tokens_admit_what_fits_and_slide_with_the_window():
    clock = Clock()
    limiter = LocalTokenLimiter(window=60.0, clock=clock)
    assert limiter.hit("k", 100, 60).allowed
    clock.now += 10
    assert limiter.hit("k", 100, 40).allowed
    denied = limiter.hit("k", 100, 1)
    assert not denied.allowed and denied.remaining == 0
    assert denied.retry_after == pytest.approx(50.0)  # when the first 60 tokens leave
    clock.now += 50
    assert limiter.hit("k", 100, 60).allowed  # the first entry left: 40 + 60 fit
    assert not limiter.hit("k", 100, 1).allowed
    assert limiter.hit("other", 100, 100).allowed  # keys are independent


def test_a_request_bigger_than_the_whole_limit_never_fits():
    verdict = LocalTokenLimiter(clock=Clock()).hit("k", 100, 101)
    assert not verdict.allowed and verdict.retry_after is None


async def test_redis_tokens_are_exact_under_concurrency(redis_server):
    redis = connect(redis_server.url, 1.0)
    limits = KeyLimits(
        redis, url=redis_server.url, prefix=f"t:{uuid.uuid4().hex[:8]}:", timeout=1.0
    )
    try:
        verdicts = await asyncio.gather(*(limits.check_tokens("k", 1000, 30) for _ in range(100)))
        assert sum(v.allowed for v in verdicts) == 33  # 33 x 30 = 990: the 34th would not fit
        refused = next(v for v in verdicts if not v.allowed)
        assert refused.remaining == 10
        assert 59 < refused.retry_after <= 60
        assert (await limits.check_tokens("k", 1000, 10)).allowed  # exactly what is left
        assert (await limits.check_tokens("k", 1000, 2000)).retry_after is None
    finally:
        await limits.aclose()
        await redis.aclose()


async def test_redis_down_counts_tokens_in_process(caplog):
    redis = connect("redis://127.0.0.1:1/0", 0.2)
    limits = KeyLimits(redis, url="redis://127.0.0.1:1/0", prefix="t:", timeout=0.2)
    try:
        assert (await limits.check_tokens("k", 50, 30)).allowed
        assert not (await limits.check_tokens("k", 50, 30)).allowed
    finally:
        await limits.aclose()
        await redis.aclose()
    assert any("counted in process" in r.getMessage() for r in caplog.records)
