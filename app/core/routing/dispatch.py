"""The one downward call to a provider: paced under its provider's `max_requests_per_second`,
inside its provider's `max_concurrency` slots, with its metrics, latency and health recorded.

Everything in routing that reaches an upstream comes through `Dispatch.send`: the router for a
chunk of its own, and a route's batcher (app/core/routing/batching.py) for a call that carries
several requests' chunks. Bulk calls (`Lane.BULK`) are paced behind interactive ones
(`ProviderPacer.wait_behind`) and may hold all but one of a provider's `max_concurrency` slots,
so an interactive call never waits for a bulk call to finish. Each route's state (its cooldown,
recent latency and hedge budget) is a `RouteState`, kept by the router across reloads and
updated here by each call's outcome.

With tracing on (app/tracing), each call is a CLIENT span named as the GenAI semantic
conventions say (`embeddings {upstream model}`), in the trace of the request it serves or, for
a call carrying several requests' chunks, beside the first sampled one's with a link to each
(the batcher's `CallOrigin`), and its context goes upstream in the call's headers. A wait for a
bulk slot, a pacing slot or a provider slot becomes a span of its own, only when there was one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app import metrics, tracing
from app.config.registry import Registry, Route
from app.core.job import Lane
from app.core.routing.cooldown import RouteHealth
from app.core.routing.hedging import HedgeBudget
from app.core.routing.latency import RouteLatency
from app.core.routing.pacing import Pacing, PacingExceeded
from app.providers import Failure, Provider, UpstreamCall, UpstreamError, UpstreamResult
from app.tracing import CallOrigin

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
        self._span_names: dict[str, tuple[str, dict[str, Any]]] = {}  # filled when traced

    def display_name(self, provider: str) -> str:
        found = self._providers.get(provider)
        return found.display_name if found is not None else provider

    async def send(
        self,
        route: Route,
        call: UpstreamCall,
        lane: Lane = Lane.INTERACTIVE,
        origin: CallOrigin | None = None,
    ) -> UpstreamResult:
        """One upstream call (perhaps carrying several requests' chunks); raises UpstreamError.
        `origin`: the trace such a call belongs to (None: the caller's current one)."""
        if lane is Lane.BULK:
            slots = self._bulk_slots[route.provider]
            began = time.time_ns() if tracing.active is not None and slots.locked() else 0
            async with slots:
                if began:
                    _waited("bulk lane wait", began, route, lane, origin)
                return await self._send(route, call, lane, origin)
        return await self._send(route, call, lane, origin)

    async def _send(
        self, route: Route, call: UpstreamCall, lane: Lane, origin: CallOrigin | None
    ) -> UpstreamResult:
        provider = self._providers[route.provider]
        state = self._states[route.key]
        traced = tracing.active
        pacer = self._pacing.pacer(
            route.provider, self._registry.providers[route.provider].max_requests_per_second
        )
        if pacer is not None:
            began = time.time_ns() if traced is not None else 0
            try:
                if lane is Lane.BULK:
                    waited = await pacer.wait_behind(most=call.timeout / 2)
                else:
                    waited = await pacer.wait_turn(most=call.timeout / 2)
            except PacingExceeded as exc:
                raise UpstreamError(
                    route.provider,
                    Failure.RATE_LIMITED,
                    f"{provider.display_name}: over its {pacer.rate:g} requests/s",
                    retry_after=exc.wait,
                ) from None
            if began and waited > 0:
                _waited("pacing wait", began, route, lane, origin)
        metrics.UPSTREAM_BATCH_SIZE.labels(route.provider).observe(len(call.inputs))
        slots = self._slots[route.provider]
        began = time.time_ns() if traced is not None and slots.locked() else 0
        started = self._clock()
        span = None
        try:
            async with slots:
                if traced is not None:
                    if began:
                        _waited("provider slot wait", began, route, lane, origin)
                    shape = functools.partial(self._span_shape, route, call)  # if sampled
                    span, call.trace_headers = traced.client_start(shape, origin)
                result = await provider.embed(call)
        except UpstreamError as exc:
            elapsed = self._record(route, started, exc.failure.name.lower())
            if traced is not None and span is not None:
                traced.end(span, exc.failure.name.lower())
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
            if traced is not None and span is not None:
                traced.end(span, attributes={"gateway.cancelled": True})
            raise
        except BaseException:
            if traced is not None and span is not None:  # not the upstream's: still ended
                traced.end(span, "_OTHER")
            raise
        state.latency.observe(self._record(route, started, "ok"))
        state.health.success()
        if span is not None:
            if result.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", result.prompt_tokens)
            span.end()
        return result

    def _span_shape(self, route: Route, call: UpstreamCall) -> tuple[str, dict[str, Any]]:
        """A call's span name and the attributes a sampler may look at (GenAI semconv)."""
        shape = self._span_names.get(route.key)
        if shape is None:
            provider = self._providers[route.provider]
            config = self._registry.providers[route.provider]
            static: dict[str, Any] = {
                "gen_ai.operation.name": "embeddings",
                "gen_ai.provider.name": getattr(provider, "gen_ai_provider_name", None)
                or config.type,
                "gen_ai.request.model": route.upstream_model,
                "gateway.provider": route.provider,
            }
            base_url = getattr(config, "base_url", None)  # none: in-process (the local model)
            if isinstance(base_url, str):
                parts = urlsplit(base_url)
                if parts.hostname:
                    static["server.address"] = parts.hostname
                    static["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
            shape = self._span_names[route.key] = (f"embeddings {route.upstream_model}", static)
        name, static = shape
        return name, {
            **static,
            "gen_ai.request.encoding_formats": _BASE64 if call.want_base64 else _FLOAT,
            "gen_ai.embeddings.dimension.count": call.expected_dims,
            "gateway.inputs": len(call.inputs),
        }

    def _record(self, route: Route, started: float, outcome: str) -> float:
        elapsed = self._clock() - started
        metrics.UPSTREAM_SECONDS.labels(route.provider).observe(elapsed)
        metrics.UPSTREAM_CALLS.labels(route.provider, route.model_id, outcome).inc()
        return elapsed


_BASE64, _FLOAT = ("base64",), ("float",)


def _waited(name: str, began: int, route: Route, lane: Lane, origin: CallOrigin | None) -> None:
    traced = tracing.active
    if traced is not None:
        attributes = {"gateway.provider": route.provider, "gateway.lane": lane.value}
        traced.waited(name, began, attributes, origin)
