"""Route choice, retries, failover and hedging for one embeddings job.

Items move through a model's routes in the order its `strategy` gives (balancing.py). Each
route gets the items still pending, split into chunks it accepts (progress.py); a chunk is
retried on the same route with backoff (or after the upstream's Retry-After, if that fits the
deadline), and whatever still fails moves to the next route. A call that timed out is not
retried while another route remains: a hung upstream would only hang again. Every call's
timeout grows with its work and is capped at a fair share of the deadline (timeouts.py). A
call that is slow to answer may be hedged on the next route (hedging.py runs the race). Only
when every item has a vector does the job succeed: there is no partial answer.

Calls go down, never back up: a chunk's call goes to its route's batcher (batching.py), which
may merge it with other requests' chunks, or straight to `Dispatch` (dispatch.py), the one
downward call to a provider, paced under its `max_requests_per_second`. Each route's cooldown,
latency and hedge budget is its `RouteState`, kept here across reloads.

With tracing on (app/tracing), a retry (from the start of its backoff) and a hedge are each a
span, with their calls' CLIENT spans under them; a route's first call needs none.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np

from app import metrics, tracing
from app.config.registry import Registry, Route
from app.core.errors import DeadlineExceeded, InputRejected, RoutingError
from app.core.job import EmbeddingJob
from app.core.matryoshka import shorten, shortens_locally
from app.core.routing.balancing import order_routes
from app.core.routing.batching import RouteBatcher
from app.core.routing.dispatch import Dispatch, RouteState
from app.core.routing.hedging import first_valid, hedge_delay
from app.core.routing.pacing import Pacing
from app.core.routing.progress import Inputs, JobProgress, inputs_for, split
from app.core.routing.timeouts import call_timeout, estimated_tokens
from app.core.token_accounting import ItemTokens, checked_usage
from app.core.upstream_cost import UpstreamCost
from app.providers import Failure, Provider, UpstreamCall, UpstreamError, UpstreamResult

if TYPE_CHECKING:
    from app.tracing.requests import Opened

log = logging.getLogger("app.routing")


@dataclass(slots=True)
class RoutedResult:
    vectors: np.ndarray  # (len(job), job.expected_dims) float32, input order
    upstream_tokens: int | None  # summed upstream usage, or None if any call did not report it
    # Tokens of calls sent upstream whose answer was not used (hedges that lost): billed too.
    hedge_tokens: int = 0
    cost: UpstreamCost = field(default_factory=UpstreamCost)
    # Each item's share of upstream_tokens (None when that is None), for the cache to keep.
    item_tokens: ItemTokens | None = None


@dataclass(slots=True)
class _Served:
    result: UpstreamResult
    route: Route  # the route whose answer was used (a hedge's, when it won)


class Router:
    def __init__(
        self,
        registry: Registry,
        providers: dict[str, Provider],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        pacing: Pacing | None = None,
        previous: Router | None = None,
    ) -> None:
        """`previous`: the router a reload replaces; its routes that did not change keep their
        cooldown, latency and hedge budget here. `pacing`: the providers' shared timelines
        (per process when None)."""
        self._registry = registry
        self._providers = providers
        self._clock = clock
        self._rng = rng or random.Random()
        self._pacing = pacing or Pacing(None)
        routes = [route for model in registry.models.values() for route in model.routes]
        self._routes = {route.key: route for route in routes}
        self._states: dict[str, RouteState] = {}
        self.routes_carried_over = 0
        for route in routes:
            if previous is not None and previous._unchanged(route, registry):
                self.routes_carried_over += 1
                self._states[route.key] = previous._states[route.key]
            else:
                self._states[route.key] = RouteState.new(route, clock)
        self._dispatch = Dispatch(
            registry, providers, self._states, pacing=self._pacing, clock=clock
        )
        self._batchers = {
            route.key: RouteBatcher(route, self._dispatch)
            for route in routes
            if route.policy.micro_batching
        }

    def successor(self, registry: Registry, providers: dict[str, Provider]) -> Router:
        """The router for a reloaded registry: same clock and random source, and the health of
        every route that did not change."""
        return Router(
            registry,
            providers,
            clock=self._clock,
            rng=self._rng,
            pacing=self._pacing,
            previous=self,
        )

    def _unchanged(self, route: Route, registry: Registry) -> bool:
        """Same route (provider, upstream model, policy, ...) on the same provider config?"""
        mine = self._routes.get(route.key)
        return (
            mine is not None
            and all(getattr(mine, name) == getattr(route, name) for name in Route.__slots__)
            and self._registry.providers[route.provider] == registry.providers[route.provider]
        )

    def state(self, route: Route) -> RouteState:
        """What this process has learnt about `route`: cooldown, latency, hedge budget."""
        return self._states[route.key]

    def route_order(self, job: EmbeddingJob) -> list[Route]:
        return order_routes(
            job.model.config.strategy,
            job.model.usable_routes,
            cooling=lambda route: self._states[route.key].health.is_open,
            latency=lambda route: self._states[route.key].latency.ewma,
            rng=self._rng,
        )

    async def embed(self, job: EmbeddingJob, timeout: float) -> RoutedResult:
        """The job's vectors, with what reaching the upstreams cost. A RoutingError raised here
        carries that cost too, as its `cost`."""
        progress = JobProgress(job)
        try:
            return await self._embed(progress, timeout)
        except RoutingError as error:
            error.cost = progress.cost
            raise

    async def _embed(self, progress: JobProgress, timeout: float) -> RoutedResult:
        job = progress.job
        deadline = self._clock() + timeout
        routes = self.route_order(job)
        try:
            async with asyncio.timeout(timeout):
                for position, route in enumerate(routes):
                    if not progress.pending:
                        break
                    if not self._states[route.key].health.admit():
                        progress.skipped.append(self._dispatch.display_name(route.provider))
                        continue
                    later = [
                        r for r in routes[position + 1 :] if self._states[r.key].health.may_admit()
                    ]
                    await self._run_route(route, later, progress, deadline)
        except TimeoutError:
            raise DeadlineExceeded(job.model.id, timeout, progress.error_details()) from None
        if progress.pending:
            raise progress.final_error()
        return RoutedResult(
            progress.vectors,
            progress.upstream_tokens(),
            progress.hedge_tokens,
            progress.cost,
            progress.item_tokens(),
        )

    async def _run_route(
        self, route: Route, later: list[Route], progress: JobProgress, deadline: float
    ) -> None:
        job = progress.job
        progress.cost.providers.append(route.provider)
        inputs = inputs_for(route, job)
        chunks = split(progress.pending, route, job)
        gate = asyncio.Semaphore(route.policy.max_concurrency_per_request)

        async def run(chunk: list[int]) -> None:
            async with gate:
                some = cast(Inputs, [inputs[i] for i in chunk])
                outcome = await self._call_with_retries(
                    route, later, chunk, some, progress, deadline
                )
            if isinstance(outcome, UpstreamError):
                progress.errors.append(outcome)
                return
            result = checked_usage(outcome.result, job, chunk, outcome.route.provider)
            progress.record(chunk, result)
            tokens = job.billed_tokens(result.prompt_tokens, chunk)
            metrics.TOKENS.labels(job.model.id, outcome.route.provider).inc(tokens)

        if len(chunks) == 1:  # the common case: no tasks to spawn
            await run(chunks[0])
            return
        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(run(chunk))
        except* RoutingError as group_error:
            raise group_error.exceptions[0] from None

    async def _call_with_retries(
        self,
        route: Route,
        later: list[Route],
        chunk: list[int],
        inputs: Inputs,
        progress: JobProgress,
        deadline: float,
    ) -> _Served | UpstreamError:
        policy = route.policy
        health = self._states[route.key].health
        tokens = estimated_tokens(inputs)
        error: UpstreamError | None = None
        traced = tracing.active
        backoff_began = 0  # time.time_ns() when the wait before a retry began, when traced
        for number in range(policy.max_attempts):
            timeout = call_timeout(policy, tokens, deadline - self._clock(), len(later))
            retry = None
            if number and traced is not None:
                attributes: dict[str, str | int] = {
                    "gateway.retry.attempt": number + 1,
                    "gateway.provider": route.provider,
                }
                retry = traced.open("retry", attributes, began_ns=backoff_began or None)
            try:
                served = await self._attempt(
                    route, later, chunk, inputs, progress, timeout, deadline
                )
            except UpstreamError as exc:
                _close(retry, exc.failure.name.lower())
                error = exc
                if exc.failure is Failure.BAD_REQUEST:
                    raise InputRejected(
                        self._dispatch.display_name(exc.provider), exc.detail
                    ) from None
                if exc.failure is Failure.TIMEOUT and later:
                    break  # a hung upstream would hang again: give the time to the next route
                if not exc.failure.retryable or number + 1 == policy.max_attempts:
                    break
                wait = self._wait_before_retry(exc, number, policy.backoff_base_seconds)
                if wait >= deadline - self._clock():
                    break  # the upstream asks for more time than is left: fail over now
                if traced is not None:
                    backoff_began = time.time_ns()
                await asyncio.sleep(wait)
                if health.is_open:
                    break  # the route went into cooldown while we waited: fail over
            except BaseException:
                _close(retry, "_OTHER")
                raise
            else:
                if retry is not None:
                    _close(retry)
                return served
        assert error is not None
        return error

    async def _attempt(
        self,
        route: Route,
        later: list[Route],
        chunk: list[int],
        inputs: Inputs,
        progress: JobProgress,
        timeout: float,
        deadline: float,
    ) -> _Served:
        """One call on `route`, hedged on a later route if it is slow and the budget allows."""
        job = progress.job
        state = self._states[route.key]
        delay = hedge_delay(route.policy, state.latency)
        if delay is not None:
            state.hedges.record_call()
        target = self._hedge_target(later, chunk, job) if delay is not None else None
        if target is None or delay is None or delay >= timeout:
            return _Served(await self._call(route, chunk, inputs, progress, timeout), route)
        primary = asyncio.create_task(self._call(route, chunk, inputs, progress, timeout))
        calls = {primary: route}
        hedged: Opened | None = None
        won = False
        try:
            done, _ = await asyncio.wait({primary}, timeout=delay)
            if done or self._states[target.key].health.is_open:
                return _Served(await primary, route)
            if not state.hedges.try_hedge():
                return _Served(await primary, route)
            hedge_inputs = cast(Inputs, [inputs_for(target, job)[i] for i in chunk])
            left = deadline - self._clock()
            hedge_timeout = call_timeout(target.policy, estimated_tokens(hedge_inputs), left, 0)
            progress.cost.providers.append(target.provider)
            traced = tracing.active
            if traced is not None:  # current only while the hedge's task copies the context
                hedged = traced.open("hedge", {"gateway.provider": target.provider})
            try:
                hedge = asyncio.create_task(
                    self._call(target, chunk, hedge_inputs, progress, hedge_timeout)
                )
            finally:
                if traced is not None and hedged is not None:
                    traced.detach(hedged)
            calls[hedge] = target
            race = await first_valid(calls, primary, job, chunk)
            for unused, tokens in race.unused:
                progress.count_unused(unused, tokens)
            if race.winner is None:
                progress.errors.extend(race.other_errors)  # the primary's goes to the retry loop
                assert race.error is not None  # no winner: the primary's error
                raise race.error
            won = race.winner[1] is target
            return _Served(*race.winner)
        finally:
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            traced = tracing.active
            if traced is not None and hedged is not None:
                traced.end(hedged.span, attributes={"gateway.hedge.won": won})

    def _hedge_target(
        self, later: list[Route], chunk: list[int], job: EmbeddingJob
    ) -> Route | None:
        """The next route that is healthy and takes this chunk in one call."""
        for route in later:
            policy = route.policy
            if self._states[route.key].health.is_open or len(chunk) > policy.max_batch_size:
                continue
            cap = policy.max_tokens_per_call
            if cap is not None and job.tokens_of(chunk) > cap:
                continue
            return route
        return None

    async def _call(
        self, route: Route, chunk: list[int], inputs: Inputs, progress: JobProgress, timeout: float
    ) -> UpstreamResult:
        """This chunk's vectors from `route`: in a call of its own, or merged with other
        requests' chunks (app/core/routing/batching.py). Raises UpstreamError."""
        job = progress.job
        local = shortens_locally(route, job)
        call = UpstreamCall(
            upstream_model=route.upstream_model,
            inputs=list(inputs),  # type: ignore[arg-type]
            dimensions=None if local else job.dimensions,
            user=job.user,
            expected_dims=job.model.config.dimensions if local else job.expected_dims,
            want_base64=route.returns_base64,
            timeout=timeout,
            request_id=job.request_id,
            input_type=job.input_type or route.input_type,
            route=route,
        )
        started = self._clock()
        batcher = self._batchers.get(route.key)
        try:
            if batcher is None:
                result = await self._dispatch.send(route, call, job.lane)
            else:
                result = await batcher.embed(call, lambda: job.tokens_of(chunk), job.lane)
        finally:
            progress.cost.seconds += self._clock() - started
        if local:
            result.vectors = shorten(result.vectors, job.expected_dims)
        return result

    @staticmethod
    def _wait_before_retry(error: UpstreamError, number: int, base: float) -> float:
        if error.retry_after is not None:
            return error.retry_after
        ceiling = base * (2**number)
        return random.uniform(ceiling / 2, ceiling)  # exponential backoff, "equal jitter"


def _close(opened: Opened | None, error_type: str | None = None) -> None:
    traced = tracing.active
    if traced is not None and opened is not None:
        traced.close(opened, error_type)
