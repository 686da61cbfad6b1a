"""The one downward call to a provider: paced under its provider's `max_requests_per_second`,
inside its provider's `max_concurrency` slots, with its metrics, latency and health recorded.

Everything in routing that reaches an upstream comes through `Dispatch.send`: the router for a
chunk of its own, and a route's batcher (app/core/routing/batching.py) for a call that carries
several requests' chunks. Bulk calls (`Lane.BULK`) are paced behind interactive ones
(`ProviderPacer.wait_behind`) and may hold all but one of a provider's `max_concurrency` slots,
so an interactive call never waits for a bulk call to finish. Each route's state (its cooldown,
recent latency and hedge budget) is a `RouteState`, kept by the router across reloads and
updated here by each call's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app import metrics
from app.config.registry import Registry, Route
from app.core.job import Lane
from app.core.routing.cooldown import RouteHealth
from app.core.routing.hedging import HedgeBudget
from app.core.routing.latency import RouteLatency
from app.core.routing.pacing import Pacing, PacingExceeded
from app.providers import Failure, Provider, UpstreamCall, UpstreamError, UpstreamResult

log = logging.getLogger("app.routing")


@dataclass(slots=True)
class RouteState:
    """What the gateway has learnt about one route in this process."""

    health: RouteHealth
    latency: RouteLatency
    hedges: HedgeBudget

    @classmethod
    def new(cls, route: Route, clock: Callable[[], float]) -> RouteState:
        return cls(
            RouteHealth(route, clock),
            RouteLatency(),
            HedgeBudget(route.policy.hedge_max_ratio, clock),
        )


class Dispatch:
    def __init__(
        self,
        registry: Registry,
        providers: dict[str, Provider],
        states: dict[str, RouteState],
        *,
        pacing: Pacing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._states = states
        self._pacing = pacing
        self._clock = clock
        self._slots = {
            name: asyncio.Semaphore(config.max_concurrency)
            for name, config in registry.providers.items()
        }
        self._bulk_slots = {
            name: asyncio.Semaphore(max(1, config.max_concurrency - 1))
            for name, config in registry.providers.items()
        }

    def display_name(self, provider: str) -> str:
        found = self._providers.get(provider)
        return found.display_name if found is not None else provider

    async def send(
        self, route: Route, call: UpstreamCall, lane: Lane = Lane.INTERACTIVE
    ) -> UpstreamResult:
        """One upstream call (perhaps carrying several requests' chunks); raises UpstreamError."""
        if lane is Lane.BULK:
            async with self._bulk_slots[route.provider]:
                return await self._send(route, call, lane)
        return await self._send(route, call, lane)

    async def _send(self, route: Route, call: UpstreamCall, lane: Lane) -> UpstreamResult:
        provider = self._providers[route.provider]
        state = self._states[route.key]
        pacer = self._pacing.pacer(
            route.provider, self._registry.providers[route.provider].max_requests_per_second
        )
        if pacer is not None:
            try:
                if lane is Lane.BULK:
                    await pacer.wait_behind(most=call.timeout / 2)
                else:
                    await pacer.wait_turn(most=call.timeout / 2)
            except PacingExceeded as exc:
                raise UpstreamError(
                    route.provider,
                    Failure.RATE_LIMITED,
                    f"{provider.display_name}: over its {pacer.rate:g} requests/s",
                    retry_after=exc.wait,
                ) from None
        metrics.UPSTREAM_BATCH_SIZE.labels(route.provider).observe(len(call.inputs))
        started = self._clock()
        try:
            async with self._slots[route.provider]:
                result = await provider.embed(call)
        except UpstreamError as exc:
            elapsed = self._record(route, started, exc.failure.name.lower())
            if exc.failure is Failure.BAD_REQUEST:
                state.health.neutral()
                raise
            if exc.failure is Failure.TIMEOUT:
                state.latency.observe(elapsed)  # slow is what least-latency avoids
            why = exc.failure.value
            state.health.failure(exc.detail if why in exc.detail else f"{why}: {exc.detail}")
            log.warning(
                "upstream call failed",
                extra={
                    "provider": route.provider,
                    "route": route.key,
                    "failure": exc.failure.name,
                    "detail": exc.detail,
                },
            )
            raise
        except asyncio.CancelledError:
            # Cut short (a hedge won, or the request ended): slow, but not proven broken.
            state.latency.observe(self._record(route, started, "cancelled"))
            state.health.neutral()
            raise
        state.latency.observe(self._record(route, started, "ok"))
        state.health.success()
        return result

    def _record(self, route: Route, started: float, outcome: str) -> float:
        elapsed = self._clock() - started
        metrics.UPSTREAM_SECONDS.labels(route.provider).observe(elapsed)
        metrics.UPSTREAM_CALLS.labels(route.provider, route.model_id, outcome).inc()
        return elapsed
