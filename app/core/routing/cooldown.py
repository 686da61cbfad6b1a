"""Per-route cooldown (a small circuit breaker): skip a route that keeps failing, then probe it.

After `cooldown_failures` consecutive failed calls the route is skipped for `cooldown_seconds`;
then exactly one request is let through as a trial, and its outcome closes or reopens it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app import metrics
from app.config.registry import Route
from app.core.routing.timeouts import MOST_TOKENS_PER_REQUEST, own_budget

log = logging.getLogger("app.routing")


class RouteHealth:
    def __init__(self, route: Route, clock: Callable[[], float]) -> None:
        policy = route.policy
        self.route_key = route.key
        self._gauge = metrics.ROUTE_COOLDOWN.labels(route.model_id, route.provider)
        self._gauge.set(0)
        self._threshold = policy.cooldown_failures
        self._cooldown = policy.cooldown_seconds
        # A trial that never reports back (its request was cancelled) must not wedge the route;
        # the lease outlasts the longest trial call can run, whatever its work.
        self._trial_lease = own_budget(policy, MOST_TOKENS_PER_REQUEST) * policy.max_attempts + 1.0
        self._clock = clock
        self.consecutive_failures = 0
        self._open_until: float | None = None
        self._trial_started: float | None = None
        # For the console's Routes page: what went wrong last, and when (wall clock).
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def cooldown_left(self) -> float | None:
        """Seconds until the route may be tried again; None when it is not cooling down."""
        if self._open_until is None:
            return None
        return max(0.0, self._open_until - self._clock())

    def may_admit(self) -> bool:
        """Would admit() let a request through now? Asks without taking the trial."""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        return self._trial_started is None or now - self._trial_started >= self._trial_lease

    def admit(self) -> bool:
        """May a request use this route now? In the half-open state only one may, as the trial."""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        if self._trial_started is not None and now - self._trial_started < self._trial_lease:
            return False
        self._trial_started = now
        return True

    def success(self) -> None:
        if self._open_until is not None:
            log.warning("route recovered, cooldown closed", extra={"route": self.route_key})
            self._gauge.set(0)
        self.consecutive_failures = 0
        self._open_until = None
        self._trial_started = None

    def failure(self, reason: str | None = None) -> None:
        self.consecutive_failures += 1
        if reason is not None:
            self.last_error, self.last_error_at = reason, time.time()
        trial_failed = self._trial_started is not None
        if trial_failed or self.consecutive_failures >= self._threshold:
            if self._open_until is None:
                log.warning(
                    "route cooling down after %d consecutive failures",
                    self.consecutive_failures,
                    extra={"route": self.route_key, "cooldown_seconds": self._cooldown},
                )
            self._open_until = self._clock() + self._cooldown
            self._trial_started = None
            self._gauge.set(1)

    def neutral(self) -> None:
        """The call proved nothing about the route (bad input, or cancelled): release a trial."""
        self._trial_started = None
