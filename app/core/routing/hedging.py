"""When to hedge a call, how many hedges a route may send, and the race between the two calls.

A hedge sends a chunk whose call has not answered within `hedge_after_ms` to the next healthy
route as well; the first valid answer wins and the other call is cancelled. The budget keeps
the extra cost bounded: over a sliding window a route may hedge at most `hedge_max_ratio` of
its calls (and always at least one, so a lone slow call can be rescued). The window is in
process: with several workers each one keeps the ratio, so the total keeps it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from app import metrics
from app.config.registry import Route, RoutePolicy
from app.core.job import EmbeddingJob
from app.core.routing.latency import RouteLatency
from app.providers import Failure, UpstreamError, UpstreamResult

AUTO_FLOOR_SECONDS = 0.05  # below this a p95 is noise, and hedges would fire on healthy calls
AUTO_CEILING_SECONDS = 2.0  # also the delay while too few samples exist to know the p95
WINDOW_SECONDS = 60.0
_BUCKETS = 12


def hedge_delay(policy: RoutePolicy, latency: RouteLatency) -> float | None:
    """Seconds to wait before hedging a call on this route; None when hedging is off."""
    setting = policy.hedge_after_ms
    if setting == "auto":
        p95 = latency.p95()
        if p95 is None:
            return AUTO_CEILING_SECONDS
        return min(AUTO_CEILING_SECONDS, max(AUTO_FLOOR_SECONDS, p95))
    if setting <= 0 or policy.hedge_max_ratio <= 0:
        return None
    return setting / 1000


class HedgeBudget:
    """Calls and hedges over the last WINDOW_SECONDS, counted in buckets of a fixed width."""

    def __init__(self, ratio: float, clock: Callable[[], float]) -> None:
        self._ratio = ratio
        self._clock = clock
        self._width = WINDOW_SECONDS / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._hedges = [0] * _BUCKETS
        self._epoch = [-1] * _BUCKETS  # which bucket-width period each slot currently counts

    def _slot(self) -> int:
        period = int(self._clock() // self._width)
        slot = period % _BUCKETS
        if self._epoch[slot] != period:
            self._epoch[slot] = period
            self._calls[slot] = 0
            self._hedges[slot] = 0
        return slot

    def _totals(self) -> tuple[int, int]:
        oldest = int(self._clock() // self._width) - _BUCKETS + 1
        calls = hedges = 0
        for slot in range(_BUCKETS):
            if self._epoch[slot] >= oldest:
                calls += self._calls[slot]
                hedges += self._hedges[slot]
        return calls, hedges

    def window(self) -> tuple[int, int]:
        """Calls and hedges in the current window (read-only: for the console)."""
        return self._totals()

    def record_call(self) -> None:
        self._calls[self._slot()] += 1

    def try_hedge(self) -> bool:
        """Take one hedge from the budget if the window allows it."""
        slot = self._slot()
        calls, hedges = self._totals()
        if hedges + 1 > max(1.0, self._ratio * calls):
            return False
        self._hedges[slot] += 1
        return True


@dataclass(slots=True)
class Race:
    """How a hedged pair's race ended, for the router to record: the winner's result and route
    (None when both failed), every call sent whose answer was not used and its tokens (billed
    too, so counted), and, when both failed, the error to raise and the others'."""

    winner: tuple[UpstreamResult, Route] | None
    unused: list[tuple[Route, int]]
    error: UpstreamError | None = None
    other_errors: list[UpstreamError] = field(default_factory=list)


async def first_valid(
    calls: dict[asyncio.Task[UpstreamResult], Route],
    primary: asyncio.Task[UpstreamResult],
    job: EmbeddingJob,
    chunk: list[int],
) -> Race:
    """The first call of a hedged pair to answer validly wins; the other is cancelled. An input
    the upstream rejected ends the race at once (no other call can fix that); if both calls
    fail, the primary's error is the one to raise."""
    pending = set(calls)
    winner: asyncio.Task[UpstreamResult] | None = None
    errors: dict[asyncio.Task[UpstreamResult], UpstreamError] = {}
    rejected: UpstreamError | None = None
    while pending and winner is None and rejected is None:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=lambda t: t is not primary):
            exc = task.exception()
            if exc is None:
                winner = task
                break
            if not isinstance(exc, UpstreamError):
                raise exc
            errors[task] = exc
            if exc.failure is Failure.BAD_REQUEST:
                rejected = exc  # the input is at fault: no other call can fix that
                break
    unused: list[tuple[Route, int]] = []
    for task, route in calls.items():
        if task is winner:
            outcome = "won"
        elif not task.done():
            task.cancel()
            outcome = "cancelled"
            # Sent, so possibly billed: counted at our own token count (it reported none).
            unused.append((route, job.tokens_of(chunk)))
        else:
            outcome = "lost"
            if not task.cancelled() and task.exception() is None:
                unused.append((route, job.billed_tokens(task.result().prompt_tokens, chunk)))
        metrics.HEDGED_CALLS.labels(job.model.id, route.provider, outcome).inc()
    if winner is not None:
        return Race((winner.result(), calls[winner]), unused)
    if rejected is not None:
        return Race(None, unused, rejected)
    error = errors.get(primary) or next(iter(errors.values()))
    others = [e for task, e in errors.items() if task is not primary and e is not error]
    return Race(None, unused, error, others)
