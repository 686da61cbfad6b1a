"""Recent latency of one route, in process: an EWMA for balancing and a p95 for hedging.

Each worker learns from its own calls; that is enough to rank routes and pick a hedge delay,
and it needs no shared state between workers or replicas.
"""

from __future__ import annotations

from collections import deque

EWMA_WEIGHT = 0.3  # a new sample's share: a route that slows down is noticed in a few calls
WINDOW = 200  # samples kept for the percentile
MIN_SAMPLES = 20  # fewer than this and a percentile says nothing yet


class RouteLatency:
    __slots__ = ("_recent", "_sorted", "ewma")

    def __init__(self) -> None:
        self.ewma: float | None = None
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self._sorted: list[float] | None = None

    def observe(self, seconds: float) -> None:
        previous = self.ewma
        self.ewma = seconds if previous is None else previous + EWMA_WEIGHT * (seconds - previous)
        self._recent.append(seconds)
        self._sorted = None

    def p95(self) -> float | None:
        if len(self._recent) < MIN_SAMPLES:
            return None
        if self._sorted is None:  # sorted at most once per new sample, only when asked
            self._sorted = sorted(self._recent)
        return self._sorted[int(0.95 * (len(self._sorted) - 1))]
