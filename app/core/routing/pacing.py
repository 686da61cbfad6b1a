"""Pacing: keep one provider's calls under its own request limit (`max_requests_per_second`).

Calls are spaced, not counted in windows: each call reserves the next free slot on the
provider's timeline, `1 / (rate x HEADROOM)` seconds after the one before, and waits for it.
Spacing never bursts past the upstream's limit at a window's edge, and while calls wait for
their slot micro-batching (app/core/routing/batching.py) gathers more inputs into each one,
so under the cap batches grow instead of calls failing with 429.

With Redis (app/state/pacing_timeline.py) the timeline is shared by every worker and replica.
Without it, or while Redis fails, each process keeps its own timeline at its share of the rate:
the rate divided by the processes that shared it when Redis last answered (without Redis: by
`WORKERS`), so a fallback stays under the limit as a whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from app import metrics

# Aim a little under the upstream's limit: its clock and ours disagree at the edges.
HEADROOM = 0.95
# How close a slot must be for a bulk call to book it, in intervals: an interactive call then
# finds the timeline free within this much of one interval (the slot the bulk call booked,
# then its own), not within two.
BULK_AHEAD = 0.1


class SharedTimeline(Protocol):
    async def reserve(
        self, provider: str, interval: float, most: float
    ) -> tuple[float, int] | None:
        """Reserve the next slot unless it is more than `most` seconds away: the seconds to it
        (reserved only if <= most), and how many processes pace this provider; None when the
        shared timeline can't be reached (pace locally)."""
        ...


class PacingExceeded(Exception):
    """The next free slot is further away than the call may wait."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"next slot in {wait:.2f}s")
        self.wait = wait


class ProviderPacer:
    """One provider's timeline in this process, and the shared one when there is one."""

    def __init__(
        self,
        provider: str,
        rate: float,
        *,
        shared: SharedTimeline | None,
        local_share: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self._sleep = sleep
        self.rate = rate
        self._interval = 1.0 / (rate * HEADROOM)
        self._shared = shared
        self._processes = max(1, local_share)  # last known number of processes sharing it
        self._clock = clock
        self._next_local = 0.0

    async def wait_turn(self, most: float) -> float:
        """Wait for this call's slot; the seconds waited. Raises PacingExceeded, having waited
        nothing, when the slot is more than `most` seconds away."""
        wait = await self._reserve(most)
        if wait > most:
            raise PacingExceeded(wait)
        if wait > 0:
            metrics.PACING_WAIT_SECONDS.labels(self.provider).observe(wait)
            await self._sleep(wait)
        return wait

    async def wait_behind(self, most: float) -> float:
        """`wait_turn` for bulk calls: never reserve a slot more than a tenth of an interval
        ahead (BULK_AHEAD), so interactive calls, which may reserve further out, always find
        the timeline at most a little more than one interval away; a bulk call waits (off the
        timeline) until a slot that close is free. Raises PacingExceeded once it has waited
        `most` seconds without one."""
        ahead = self._interval * (BULK_AHEAD + 0.01)  # and room for floating-point error
        started = self._clock()
        while True:
            waited = self._clock() - started
            wait = await self._reserve(ahead)
            if wait <= ahead:
                waited += wait
                if waited > 0:
                    metrics.BULK_LANE_WAIT_SECONDS.labels(self.provider, "pacing").observe(waited)
                if wait > 0:
                    await self._sleep(wait)
                return waited
            pause = wait - self._interval * BULK_AHEAD
            if waited + pause > most:
                raise PacingExceeded(waited + pause)
            await self._sleep(pause)

    async def _reserve(self, most: float) -> float:
        if self._shared is not None:
            reserved = await self._shared.reserve(self.provider, self._interval, most)
            if reserved is not None:
                wait, processes = reserved
                self._processes = max(1, processes)
                return wait
        return self._reserve_locally(most)

    def _reserve_locally(self, most: float) -> float:
        now = self._clock()
        slot = max(now, self._next_local)
        if slot - now <= most:
            self._next_local = slot + self._interval * self._processes
        return slot - now


class Pacing:
    """Every paced provider's pacer, kept across registry reloads while its rate is the same."""

    def __init__(
        self,
        shared: SharedTimeline | None,
        *,
        local_share: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._local_share = local_share
        self._clock = clock
        self._pacers: dict[str, ProviderPacer] = {}

    def pacer(self, provider: str, rate: float | None) -> ProviderPacer | None:
        if rate is None:
            return None
        found = self._pacers.get(provider)
        if found is None or found.rate != rate:
            found = ProviderPacer(
                provider,
                rate,
                shared=self._shared,
                local_share=self._local_share,
                clock=self._clock,
            )
            self._pacers[provider] = found
        return found
