"""Micro-batching: concurrent requests' chunks for one route and call shape share an upstream call.

A route keeps up to `max_inflight_calls` calls in flight. While it has a free slot a chunk goes
out at once, on its own, in its caller's task: nothing is added to latency at low load. Once
every slot is busy, new chunks gather in a queue per call shape (upstream model, `dimensions`,
`user`, `input_type`, encoding and input kind: everything the upstream sees besides the inputs);
each slot that frees takes the oldest shape's queue, up to `max_batch_size` inputs and
`max_tokens_per_call` tokens, as one call. `batch_window_ms` makes a chunk wait that long for
company even when a slot is free (unless its batch fills first).

Bulk chunks (`Lane.BULK`: Batch API lines, keys with `priority: bulk`) queue apart from
interactive ones and never merge with them: a free slot takes the oldest interactive queue
first, and bulk calls hold at most all slots but one, so an interactive chunk never waits for a
bulk call to finish (with `max_inflight_calls: 1` the one slot is shared). While interactive
traffic keeps every slot busy, bulk waits; bulk never waits for a slot that is free.

Each request gets exactly its own rows of the merged answer, in its own order. The upstream's
one token total is split across the chunks in proportion to the gateway's own count for each
(largest remainder: the parts sum to the total), or, from an upstream that counts each input
(the local model), summed from each chunk's own inputs. A 400 about the input of a merged call
is bisected: the halves are sent again until the chunk at fault is alone, so only its request
gets the 400. Any other failure is every chunk's, and goes back to each caller's own retry and
failover. A caller that gives up (its timeout, a hedge that won, a client gone) leaves the
queue, or the call, which is cancelled once nobody waits for it.

With tracing on (app/tracing), a chunk's time in the queue is a `batching queue` span in its
request's trace, ended when its batch left the queue and linked to the call that carried it;
that call's span (Dispatch's) links every chunk's wait in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from app import metrics, tracing
from app.config.registry import Route
from app.core.job import Lane
from app.core.token_accounting import split_proportionally
from app.providers import Failure, UpstreamCall, UpstreamError, UpstreamResult
from app.tracing import CallOrigin

if TYPE_CHECKING:
    from app.tracing import Queued

Shape = tuple[object, ...]
_BULK = {"gateway.lane": Lane.BULK.value}  # a wait span's attributes in the bulk lane


class Sender(Protocol):
    """What a batcher sends its calls through: `Dispatch` (dispatch.py), below it."""

    def display_name(self, provider: str) -> str: ...

    async def send(
        self, route: Route, call: UpstreamCall, lane: Lane, origin: CallOrigin | None = None
    ) -> UpstreamResult: ...


def shape_of(call: UpstreamCall) -> Shape:
    """What must be equal for two calls to be sent as one."""
    text = not call.inputs or isinstance(call.inputs[0], str)
    return (
        call.upstream_model,
        call.dimensions,
        call.expected_dims,
        call.user,
        call.input_type,
        call.want_base64,
        text,
    )


@dataclass(slots=True, eq=False)
class _Chunk:
    call: UpstreamCall
    lane: Lane
    tokens: Callable[[], int]  # the gateway's count for its inputs; asked only when needed
    deadline: float  # loop time by which its caller stops waiting
    queued_at: float
    future: asyncio.Future[UpstreamResult]
    batch: _Batch | None = None
    # With tracing on: its place in its request's trace (with its wait's span if sampled),
    # and when (time.time_ns()) its batch left the queue.
    trace: Queued | None = None
    left_ns: int = 0


@dataclass(slots=True, eq=False)
class _Batch:
    chunks: list[_Chunk]
    lane: Lane
    task: asyncio.Task[None] | None = None

    def nobody_waits(self) -> bool:
        return all(chunk.future.done() for chunk in self.chunks)


class RouteBatcher:
    """One route's call slots and the chunks queued for them."""

    def __init__(self, route: Route, sender: Sender) -> None:
        policy = route.policy
        self._route = route
        self._provider = provider = route.provider
        self._display_name = sender.display_name(provider)
        self._sender = sender
        self._slots = policy.max_inflight_calls
        self._most_inputs = policy.max_batch_size
        self._most_tokens = policy.max_tokens_per_call
        self._window = policy.batch_window_ms / 1000
        self._in_flight = 0
        # Bulk calls may hold all slots but one, so an interactive chunk never waits for one.
        self._bulk_slots = max(1, self._slots - 1)
        self._bulk_in_flight = 0
        self._queues: dict[tuple[Lane, Shape], deque[_Chunk]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._requests_per_call = metrics.UPSTREAM_BATCH_REQUESTS.labels(provider)
        self._bulk_waits = metrics.BULK_LANE_WAIT_SECONDS.labels(provider, "slot")

    async def embed(
        self, call: UpstreamCall, tokens: Callable[[], int], lane: Lane = Lane.INTERACTIVE
    ) -> UpstreamResult:
        if self._may_go_now(lane):
            self._hold(lane)
            self._requests_per_call.observe(1)
            try:
                return await self._sender.send(self._route, call, lane)
            finally:
                self._release(lane)
        return await self._queued(call, tokens, lane)

    def _may_go_now(self, lane: Lane) -> bool:
        """A slot is free and nothing this chunk must let go first is waiting."""
        if self._window or self._in_flight >= self._slots:
            return False
        if lane is Lane.INTERACTIVE:
            return not any(key[0] is Lane.INTERACTIVE for key in self._queues)
        return not self._queues and self._bulk_in_flight < self._bulk_slots

    def _hold(self, lane: Lane) -> None:
        self._in_flight += 1
        if lane is Lane.BULK:
            self._bulk_in_flight += 1

    async def _queued(
        self, call: UpstreamCall, tokens: Callable[[], int], lane: Lane
    ) -> UpstreamResult:
        loop = asyncio.get_running_loop()
        now = loop.time()
        chunk = _Chunk(call, lane, tokens, now + call.timeout, now, loop.create_future())
        traced = tracing.active
        if traced is not None:
            chunk.trace = traced.queued(_BULK if lane is Lane.BULK else None)
        self._queues.setdefault((lane, shape_of(call)), deque()).append(chunk)
        self._dispatch()
        try:
            async with asyncio.timeout_at(chunk.deadline):
                return await chunk.future
        except TimeoutError:
            raise UpstreamError(
                self._provider,
                Failure.TIMEOUT,
                f"{self._display_name}: no answer within {call.timeout:g}s",
            ) from None
        finally:
            if not chunk.future.done():
                chunk.future.cancel()
            self._leave(chunk)
            if traced is not None and chunk.trace is not None and chunk.trace.span is not None:
                traced.end_wait(chunk.trace.span, chunk.left_ns, None)  # unless its call ended it

    def _leave(self, chunk: _Chunk) -> None:
        """A caller stopped waiting: drop its chunk from the queue, or cancel its call if no
        one else waits for it."""
        batch = chunk.batch
        if batch is None:
            key = (chunk.lane, shape_of(chunk.call))
            queue = self._queues.get(key)
            if queue is not None and chunk in queue:
                queue.remove(chunk)
                if not queue:
                    del self._queues[key]
        elif batch.task is not None and not batch.task.done() and batch.nobody_waits():
            batch.task.cancel()

    def _release(self, lane: Lane) -> None:
        self._in_flight -= 1
        if lane is Lane.BULK:
            self._bulk_in_flight -= 1
        if self._queues:
            self._dispatch()

    def _dispatch(self) -> None:
        """Fill free slots: the oldest interactive queue first; bulk ones only when no
        interactive chunk waits, and within the bulk share of the slots."""
        loop = asyncio.get_running_loop()
        while self._in_flight < self._slots and self._queues:
            waiting = [item for item in self._queues.items() if item[0][0] is Lane.INTERACTIVE]
            if not waiting:
                if self._bulk_in_flight >= self._bulk_slots:
                    return
                waiting = list(self._queues.items())
            key, queue = min(waiting, key=lambda item: item[1][0].queued_at)
            if self._window and not self._full(queue):
                due = queue[0].queued_at + self._window
                if loop.time() < due:
                    if self._timer is None:
                        self._timer = loop.call_at(due, self._timer_fired)
                    return
            lane = key[0]
            batch = _Batch(self._take(queue), lane)
            if not queue:
                del self._queues[key]
            now = loop.time()
            # Traced, the call runs in a context of its own, not that of the request whose
            # task happened to dispatch it: it belongs to every request it carries.
            left_ns, context = 0, None
            if tracing.active is not None:
                left_ns, context = time.time_ns(), contextvars.Context()
            for chunk in batch.chunks:
                chunk.batch = batch
                chunk.left_ns = left_ns
                if lane is Lane.BULK:
                    self._bulk_waits.observe(now - chunk.queued_at)
            self._hold(lane)
            batch.task = loop.create_task(self._run(batch), context=context)
            # Released when the task ends, however: a task cancelled before it ever ran (its
            # callers left in the turn it was created) never enters `_run`'s body.
            batch.task.add_done_callback(partial(self._finished, batch))

    def _timer_fired(self) -> None:
        self._timer = None
        self._dispatch()

    def _full(self, queue: deque[_Chunk]) -> bool:
        return sum(len(chunk.call.inputs) for chunk in queue) >= self._most_inputs

    def _take(self, queue: deque[_Chunk]) -> list[_Chunk]:
        taken: list[_Chunk] = []
        inputs = tokens = 0
        while queue:
            chunk = queue[0]
            size = len(chunk.call.inputs)
            if taken and inputs + size > self._most_inputs:
                break
            if self._most_tokens is not None:
                count = chunk.tokens()
                if taken and tokens + count > self._most_tokens:
                    break
                tokens += count
            taken.append(queue.popleft())
            inputs += size
        return taken

    async def _run(self, batch: _Batch) -> None:
        # Cancelled: nobody waits for it any more (or the loop is closing).
        with contextlib.suppress(asyncio.CancelledError):
            await self._resolve(batch.chunks, batch.lane)

    def _finished(self, batch: _Batch, _: asyncio.Task[None]) -> None:
        for chunk in batch.chunks:
            if not chunk.future.done():
                chunk.future.set_exception(
                    UpstreamError(self._provider, Failure.CONNECT, "the call was cut short")
                )
        self._release(batch.lane)

    async def _resolve(self, chunks: list[_Chunk], lane: Lane) -> None:
        """Send `chunks` as one call and hand each its part; bisect on a rejected input."""
        waiting = [chunk for chunk in chunks if not chunk.future.done()]
        if not waiting:
            return
        self._requests_per_call.observe(len(waiting))
        traced = tracing.active
        origin = None
        if traced is not None:
            origin = traced.origin(chunk.trace for chunk in waiting)
        try:
            result = await self._sender.send(self._route, self._merged(waiting), lane, origin)
        except UpstreamError as exc:
            if exc.failure is Failure.BAD_REQUEST and len(waiting) > 1:
                half = len(waiting) // 2
                await self._resolve(waiting[:half], lane)
                await self._resolve(waiting[half:], lane)
                return
            for chunk in waiting:
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
            return
        except Exception as exc:  # not the upstream's fault: every caller sees it as today
            for chunk in waiting:
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
            return
        finally:
            if traced is not None and origin is not None:
                for chunk in waiting:
                    if chunk.trace is not None and chunk.trace.span is not None:
                        traced.end_wait(chunk.trace.span, chunk.left_ns, origin.client)
        self._hand_out(waiting, result)

    def _merged(self, chunks: list[_Chunk]) -> UpstreamCall:
        left = max(chunk.deadline for chunk in chunks) - asyncio.get_running_loop().time()
        first = chunks[0].call
        if len(chunks) == 1:
            return replace(first, timeout=max(0.001, min(first.timeout, left)))
        inputs: list[Any] = []
        for chunk in chunks:
            inputs.extend(chunk.call.inputs)
        # The first request's ID goes upstream: a merged call has no one request of its own.
        return replace(first, inputs=inputs, timeout=max(0.001, left))

    @staticmethod
    def _hand_out(chunks: list[_Chunk], result: UpstreamResult) -> None:
        if len(chunks) == 1:
            if not chunks[0].future.done():
                chunks[0].future.set_result(result)
            return
        counts = result.input_tokens
        start = 0
        for chunk, share in zip(chunks, RouteBatcher._shares(chunks, result), strict=True):
            end = start + len(chunk.call.inputs)
            if not chunk.future.done():
                own = None if counts is None else counts[start:end]
                chunk.future.set_result(UpstreamResult(result.vectors[start:end], share, own))
            start = end

    @staticmethod
    def _shares(chunks: list[_Chunk], result: UpstreamResult) -> list[int | None]:
        """Each chunk's part of the call's tokens: its own inputs' counts when the upstream gave
        them, else a share in proportion to the gateway's count."""
        if result.prompt_tokens is None:
            return [None] * len(chunks)
        counts = result.input_tokens
        if counts is None:
            return list(split_proportionally(result.prompt_tokens, [c.tokens() for c in chunks]))
        each = counts.tolist()
        shares: list[int | None] = []
        start = 0
        for chunk in chunks:
            end = start + len(chunk.call.inputs)
            shares.append(sum(each[start:end]))
            start = end
        return shares
