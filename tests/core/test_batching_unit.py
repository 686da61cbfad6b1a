"""RouteBatcher in process: when chunks merge, what each caller gets back, and how a rejected
input, a failure or a caller that leaves is handled. (Real sockets: tests/core/test_batching.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from app.config.registry import Route, RouteConfig
from app.core.job import Lane
from app.core.routing.batching import RouteBatcher
from app.providers import Failure, UpstreamCall, UpstreamError, UpstreamResult
from app.providers.openai import OpenAIConfig

DIMS = 4


def vector_of(text: str) -> np.ndarray:
    return np.full(DIMS, float(len(text)), dtype=np.float32)


class Upstream:
    """Answers each call once released; records every call's inputs."""

    def __init__(self, *, reject: set[str] | None = None, fail: Failure | None = None) -> None:
        self.calls: list[list[str]] = []
        self.reject = reject or set()
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()
        self.cancelled = 0

    async def send(self, call: UpstreamCall) -> UpstreamResult:
        inputs = list(call.inputs)
        self.calls.append(inputs)  # type: ignore[arg-type]
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise UpstreamError("up", self.fail, "up: server error")
        if self.reject & set(inputs):  # type: ignore[arg-type]
            raise UpstreamError("up", Failure.BAD_REQUEST, "bad input")
        vectors = np.stack([vector_of(t) for t in inputs])  # type: ignore[arg-type]
        return UpstreamResult(vectors, prompt_tokens=10 * len(inputs) + 1)


def call(*texts: str, timeout: float = 5.0, dimensions: int | None = None) -> UpstreamCall:
    return UpstreamCall(
        upstream_model="m",
        inputs=list(texts),
        dimensions=dimensions,
        user=None,
        expected_dims=DIMS,
        want_base64=False,
        timeout=timeout,
        request_id="r",
    )


class Sender:
    """Stands where `Dispatch` does: the batcher's one way to an upstream."""

    def __init__(self, send: Callable[[UpstreamCall], Awaitable[UpstreamResult]]) -> None:
        self._send = send

    def display_name(self, provider: str) -> str:
        return provider.title()

    async def send(
        self, route: Route, call: UpstreamCall, lane: Lane, origin: object = None
    ) -> UpstreamResult:
        return await self._send(call)


def route_with(**policy: object) -> Route:
    provider = OpenAIConfig(type="openai", base_url="http://127.0.0.1:9", api_key="k")
    return Route("m", 0, "up", RouteConfig(provider="up", model="m", **policy), provider)


def batcher(upstream: Upstream, **policy: object) -> RouteBatcher:
    return RouteBatcher(route_with(**policy), Sender(upstream.send))


async def busy_then_burst(
    b: RouteBatcher, upstream: Upstream, calls: list[UpstreamCall], slots: int
) -> list[UpstreamResult | BaseException]:
    """Fill every slot with a held call, queue `calls` behind them, then let everything go."""
    upstream.gate.clear()
    holders = [asyncio.create_task(b.embed(call(f"hold{i}"), lambda: 1)) for i in range(slots)]
    await asyncio.sleep(0)
    burst = [asyncio.create_task(b.embed(c, lambda c=c: len(c.inputs))) for c in calls]
    await asyncio.sleep(0)
    upstream.gate.set()
    await asyncio.gather(*holders)
    return await asyncio.gather(*burst, return_exceptions=True)


async def test_a_lone_call_goes_out_at_once_on_its_own():
    upstream = Upstream()
    result = await batcher(upstream).embed(call("a", "bb"), lambda: 2)
    assert upstream.calls == [["a", "bb"]]
    assert result.vectors.tolist() == [vector_of("a").tolist(), vector_of("bb").tolist()]


async def test_chunks_queued_behind_busy_slots_share_one_call_and_get_their_own_rows():
    upstream = Upstream()
    b = batcher(upstream, max_inflight_calls=2)
    burst = [call(f"x{i}" * (i + 1), f"y{i}") for i in range(6)]
    results = await busy_then_burst(b, upstream, burst, slots=2)
    assert upstream.calls[2:] == [[t for c in burst for t in c.inputs]]  # one merged call
    for c, result in zip(burst, results, strict=True):
        assert isinstance(result, UpstreamResult)
        assert result.vectors.tolist() == [vector_of(t).tolist() for t in c.inputs]
    # The upstream's one total, split in proportion to each chunk's own count: it sums back.
    shares = [r.prompt_tokens for r in results]  # type: ignore[union-attr]
    assert sum(shares) == 10 * 12 + 1 and all(s > 0 for s in shares)


async def test_an_upstream_s_own_count_per_input_gives_each_chunk_exactly_its_inputs_tokens():
    upstream = Upstream()
    plain = upstream.send

    async def counting(c: UpstreamCall) -> UpstreamResult:
        result = await plain(c)
        counts = np.array([len(t) for t in c.inputs], dtype=np.int64)  # type: ignore[arg-type]
        return UpstreamResult(result.vectors, int(counts.sum()), input_tokens=counts)

    b = RouteBatcher(route_with(max_inflight_calls=1), Sender(counting))
    burst = [call("aaaa", "b"), call("cc"), call("ddddddd", "eee", "f")]
    # Our own counts are far off; they must not be used at all.
    results = await busy_then_burst(b, upstream, burst, slots=1)
    assert upstream.calls[1:] == [[t for c in burst for t in c.inputs]]
    for c, result in zip(burst, results, strict=True):
        assert isinstance(result, UpstreamResult)
        assert result.prompt_tokens == sum(len(t) for t in c.inputs)
        assert result.input_tokens is not None
        assert result.input_tokens.tolist() == [len(t) for t in c.inputs]


async def test_a_batch_stops_at_max_batch_size_and_different_shapes_never_merge():
    upstream = Upstream()
    b = batcher(upstream, max_inflight_calls=1, max_batch_size=3)
    burst = [call("a"), call("b"), call("c", dimensions=2), call("d"), call("e")]
    await busy_then_burst(b, upstream, burst, slots=1)
    sent = sorted(upstream.calls[1:])
    assert sent == [["a", "b", "d"], ["c"], ["e"]]


async def test_a_rejected_input_fails_only_the_chunk_that_carries_it():
    upstream = Upstream(reject={"poison"})
    b = batcher(upstream, max_inflight_calls=1)
    burst = [call("ok1"), call("ok2", "poison"), call("ok3"), call("ok4"), call("ok5")]
    results = await busy_then_burst(b, upstream, burst, slots=1)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [1]
    error = results[1]
    assert isinstance(error, UpstreamError) and error.failure is Failure.BAD_REQUEST
    for c, result in zip(burst, results, strict=True):
        if isinstance(result, UpstreamResult):
            assert result.vectors.tolist() == [vector_of(t).tolist() for t in c.inputs]


async def test_a_retryable_failure_of_a_merged_call_reaches_every_caller():
    upstream = Upstream()
    b = batcher(upstream, max_inflight_calls=1)
    upstream.gate.clear()
    holder = asyncio.create_task(b.embed(call("hold"), lambda: 1))
    await asyncio.sleep(0)
    burst = [asyncio.create_task(b.embed(call(t), lambda: 1)) for t in ("a", "b", "c")]
    await asyncio.sleep(0)
    upstream.fail = Failure.SERVER
    upstream.gate.set()
    results = await asyncio.gather(holder, *burst, return_exceptions=True)
    assert all(isinstance(r, UpstreamError) and r.failure is Failure.SERVER for r in results)
    assert len(upstream.calls) == 2  # the holder's and one merged call: no bisecting


async def test_a_caller_that_leaves_the_queue_is_not_sent_and_a_call_nobody_awaits_is_cancelled():
    upstream = Upstream()
    b = batcher(upstream, max_inflight_calls=1)
    upstream.gate.clear()
    holder = asyncio.create_task(b.embed(call("hold"), lambda: 1))
    await asyncio.sleep(0)
    leaver = asyncio.create_task(b.embed(call("leaves"), lambda: 1))
    stayer = asyncio.create_task(b.embed(call("stays"), lambda: 1))
    await asyncio.sleep(0)
    leaver.cancel()
    upstream.gate.set()
    await holder
    assert (await stayer).vectors.tolist() == [vector_of("stays").tolist()]
    assert upstream.calls == [["hold"], ["stays"]]

    upstream.gate.clear()
    alone = asyncio.create_task(b.embed(call("hold2"), lambda: 1))
    await asyncio.sleep(0)
    queued = asyncio.create_task(b.embed(call("q"), lambda: 1))
    await asyncio.sleep(0)
    alone.cancel()  # its own call, in its own task: cancelled with it
    await asyncio.sleep(0.01)
    while len(upstream.calls) < 4:  # the freed slot sends the queued chunk
        await asyncio.sleep(0.01)
    queued.cancel()  # now nobody waits for that call: it is cancelled too
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.sleep(0.01)
    assert upstream.cancelled == 2


async def test_a_queued_caller_times_out_on_its_own_deadline():
    upstream = Upstream()
    b = batcher(upstream, max_inflight_calls=1)
    upstream.gate.clear()
    holder = asyncio.create_task(b.embed(call("hold", timeout=30), lambda: 1))
    await asyncio.sleep(0)
    with pytest.raises(UpstreamError) as raised:
        await b.embed(call("late", timeout=0.05), lambda: 1)
    assert raised.value.failure is Failure.TIMEOUT
    upstream.gate.set()
    await holder
    assert upstream.calls == [["hold"]]  # the one that gave up was never sent


async def test_a_batch_window_gathers_chunks_even_with_free_slots():
    upstream = Upstream()
    b = batcher(upstream, max_inflight_calls=4, batch_window_ms=50)
    results = await asyncio.gather(*(b.embed(call(t), lambda: 1) for t in ("a", "b", "c")))
    assert upstream.calls == [["a", "b", "c"]]
    assert [r.vectors.tolist() for r in results] == [[vector_of(t).tolist()] for t in "abc"]


async def test_bulk_calls_leave_a_slot_free_so_an_interactive_chunk_never_waits_for_one():
    upstream = Upstream()
    upstream.gate.clear()
    b = batcher(upstream, max_inflight_calls=2)
    bulk = [asyncio.create_task(b.embed(call(f"bulk{i}"), lambda: 1, Lane.BULK)) for i in range(3)]
    await asyncio.sleep(0)
    assert upstream.calls == [["bulk0"]]  # one bulk call out; the others wait for that slot
    asked = asyncio.create_task(b.embed(call("query"), lambda: 1))
    await asyncio.sleep(0)
    assert upstream.calls == [["bulk0"], ["query"]]  # the second slot went to it at once
    upstream.gate.set()
    await asyncio.gather(asked, *bulk)
    assert upstream.calls[2:] == [["bulk1", "bulk2"]]  # the waiting bulk chunks went together


async def test_a_freed_slot_goes_to_the_interactive_queue_before_an_older_bulk_one():
    upstream = Upstream()
    upstream.gate.clear()
    b = batcher(upstream, max_inflight_calls=2)
    held = [asyncio.create_task(b.embed(call(f"hold{i}"), lambda: 1)) for i in range(2)]
    await asyncio.sleep(0)
    older_bulk = asyncio.create_task(b.embed(call("bulk"), lambda: 1, Lane.BULK))
    await asyncio.sleep(0)
    newer = asyncio.create_task(b.embed(call("query"), lambda: 1))
    await asyncio.sleep(0)
    upstream.gate.set()
    await asyncio.gather(*held, older_bulk, newer)
    # Both slots freed together: the interactive chunk is sent first, though it came later.
    assert upstream.calls[2:] == [["query"], ["bulk"]]
    bulk_and_interactive_merged = [c for c in upstream.calls if {"query", "bulk"} <= set(c)]
    assert bulk_and_interactive_merged == []


async def test_a_call_cancelled_before_it_starts_still_frees_its_slot():
    # The queued chunk's caller leaves in the very turn of the loop in which its call is
    # dispatched: the call's task is cancelled before it ever ran. Its slot must come back.
    queued: asyncio.Task[UpstreamResult] | None = None
    gate = asyncio.Event()

    async def send(sent: UpstreamCall) -> UpstreamResult:
        if sent.inputs == ["hold"]:
            await gate.wait()
            assert queued is not None
            queued.cancel()  # ...as the slot this call held is handed to the queued chunk
        return UpstreamResult(np.stack([vector_of(t) for t in sent.inputs]), prompt_tokens=1)  # type: ignore[arg-type]

    b = RouteBatcher(route_with(max_inflight_calls=2), Sender(send))
    holding = asyncio.create_task(b.embed(call("hold"), lambda: 1, Lane.BULK))
    await asyncio.sleep(0)
    queued = asyncio.create_task(b.embed(call("queued"), lambda: 1, Lane.BULK))
    await asyncio.sleep(0)
    gate.set()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.sleep(0.01)
    # The bulk slot is free again: a new bulk chunk goes out at once.
    again = await asyncio.wait_for(b.embed(call("again"), lambda: 1, Lane.BULK), 1)
    assert again.vectors.tolist() == [vector_of("again").tolist()]
