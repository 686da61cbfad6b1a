"""Pacing's timelines: spacing in process with an injected clock, and the shared one in a real
Redis (two timelines stand for two replicas), with the fallback when Redis is away."""

from __future__ import annotations

import itertools
import time

import pytest

from app.core.routing.pacing import HEADROOM, PacingExceeded, ProviderPacer
from app.state.pacing_timeline import RedisTimeline
from app.state.redis_client import connect
from tests.harness import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Unreachable:
    async def reserve(self, provider: str, interval: float, most: float) -> None:
        return None


async def test_calls_in_process_are_spaced_at_the_rate_with_headroom():
    clock = Clock()
    pacer = ProviderPacer("up", 10, shared=None, local_share=1, clock=clock)
    interval = 1 / (10 * HEADROOM)
    waits = [await pacer._reserve(most=10) for _ in range(4)]
    assert waits == pytest.approx([0, interval, 2 * interval, 3 * interval])
    clock.now += 10  # idle for a while: no credit is saved up, the next call goes at once
    assert await pacer._reserve(most=10) == 0


async def test_a_slot_too_far_away_is_refused_without_being_reserved():
    clock = Clock()
    pacer = ProviderPacer("up", 1, shared=None, local_share=1, clock=clock)
    assert await pacer.wait_turn(most=5) == 0
    with pytest.raises(PacingExceeded):
        await pacer.wait_turn(most=0.5)
    clock.now += 1 / HEADROOM  # the slot it refused is still the next one free
    assert await pacer.wait_turn(most=0.5) == 0


async def test_without_the_shared_timeline_each_process_paces_at_its_share():
    clock = Clock()
    pacer = ProviderPacer("up", 10, shared=Unreachable(), local_share=4, clock=clock)
    await pacer._reserve(most=10)
    assert await pacer._reserve(most=10) == pytest.approx(4 / (10 * HEADROOM))


async def test_replicas_share_one_timeline_in_redis_and_learn_how_many_they_are(redis_server):
    prefix = f"egw:pace-unit-{time.monotonic_ns()}:"
    first = RedisTimeline(connect(redis_server.url, 1.0), key_prefix=prefix, timeout=1.0)
    second = RedisTimeline(connect(redis_server.url, 1.0), key_prefix=prefix, timeout=1.0)
    interval = 10.0  # long beside the time between two calls, even on a busy machine
    waits, processes = [], []
    for timeline in (first, second, first, second):
        reserved = await timeline.reserve("up", interval, most=100)
        assert reserved is not None
        waits.append(reserved[0])
        processes.append(reserved[1])
    # Each reservation is one interval after the one before, whichever replica made it (less
    # the little time that passed between them).
    for before, after in itertools.pairwise(waits):
        assert interval - 1 < after - before <= interval + 1e-6
    assert processes == [1, 2, 2, 2]
    too_far = await first.reserve("up", interval, most=0.0)
    assert too_far is not None and too_far[0] > 0
    after = await second.reserve("up", interval, most=100)
    assert after is not None and after[0] - waits[-1] < 2 * interval  # nothing was reserved


async def test_an_unreachable_redis_means_pacing_in_process_not_a_failed_call():
    port = free_port()  # nothing listens there
    timeline = RedisTimeline(
        connect(f"redis://127.0.0.1:{port}/0", 0.2), key_prefix="egw:", timeout=0.2
    )
    pacer = ProviderPacer("up", 10, shared=timeline, local_share=2, clock=Clock())
    assert await pacer._reserve(most=10) == 0
    assert await timeline.reserve("up", 0.1, most=10) is None  # skipped for a second


async def test_a_bulk_call_never_books_a_slot_more_than_one_interval_ahead():
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    pacer = ProviderPacer("up", 10, shared=None, local_share=1, clock=clock, sleep=sleep)
    interval = 1 / (10 * HEADROOM)
    for _ in range(5):  # interactive calls book the next half second
        await pacer._reserve(most=10)
    start = clock.now
    waited = await pacer.wait_behind(most=10)
    # It waited off the timeline until a slot one interval away was free, then took that one.
    assert waited == pytest.approx(5 * interval)
    assert clock.now - start == pytest.approx(5 * interval)
    # So an interactive call asking now is at most one interval from its slot.
    assert await pacer._reserve(most=10) == pytest.approx(interval)


async def test_a_bulk_call_gives_up_when_no_slot_comes_near_in_time():
    clock = Clock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    pacer = ProviderPacer("up", 10, shared=None, local_share=1, clock=clock, sleep=sleep)
    for _ in range(50):
        await pacer._reserve(most=100)  # five seconds of interactive slots booked
    with pytest.raises(PacingExceeded):
        await pacer.wait_behind(most=1.0)
