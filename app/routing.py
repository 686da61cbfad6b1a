"""Route choice, retries, failover, hedging, cooldowns and batch splitting for one embeddings job.

Items move through a model's routes in the order its `strategy` gives (app/balancing.py).
Each route gets the items still pending, split into chunks it accepts; a chunk is retried on
the same route with backoff (or after the upstream's Retry-After, if that fits the deadline),
and whatever still fails moves to the next route. A call that timed out is not retried while
another route remains: a hung upstream would only hang again. Every call's timeout grows with
its work and is capped at a fair share of the deadline (app/timeouts.py). A call that is slow
to answer may be hedged on the next route (app/hedging.py). Only when every item has a vector
does the job succeed: there is no partial answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app import metrics
from app.balancing import order_routes
from app.errors import GatewayError, invalid_request, upstream_failure, upstream_timeout
from app.health import RouteHealth
from app.hedging import HedgeBudget, hedge_delay
from app.jobs import EmbeddingJob
from app.latency import RouteLatency
from app.matryoshka import shorten, shortens_locally
from app.providers import Failure, Provider, UpstreamCall, UpstreamError, UpstreamResult
from app.registry import Registry, Route
from app.timeouts import call_timeout, estimated_tokens
from app.tokens import UndecodableTokens
from app.usage_check import checked_usage

log = logging.getLogger("app.routing")

Inputs = list[str] | list[list[int]]


@dataclass(slots=True)
class RoutedResult:
    vectors: np.ndarray  # (len(job), job.expected_dims) float32, input order
    upstream_tokens: int | None  # summed upstream usage, or None if any call did not report it
    # Tokens of calls sent upstream whose answer was not used (hedges that lost): billed too.
    hedge_tokens: int = 0


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
        previous: Router | None = None,
    ) -> None:
        """`previous`: the router a reload replaces; its routes that did not change keep their
        cooldown, latency and hedge budget here."""
        self._registry = registry
        self._providers = providers
        self._clock = clock
        self._rng = rng or random.Random()
        routes = [route for model in registry.models.values() for route in model.routes]
        self._routes = {route.key: route for route in routes}
        self._health: dict[str, RouteHealth] = {}
        self._latency: dict[str, RouteLatency] = {}
        self._budgets: dict[str, HedgeBudget] = {}
        self.routes_carried_over = 0
        for route in routes:
            if previous is not None and previous._unchanged(route, registry):
                self.routes_carried_over += 1
                self._health[route.key] = previous._health[route.key]
                self._latency[route.key] = previous._latency[route.key]
                self._budgets[route.key] = previous._budgets[route.key]
            else:
                self._health[route.key] = RouteHealth(route, clock)
                self._latency[route.key] = RouteLatency()
                self._budgets[route.key] = HedgeBudget(route.policy.hedge_max_ratio, clock)
        self._provider_slots = {
            name: asyncio.Semaphore(config.max_concurrency)
            for name, config in registry.providers.items()
        }

    def successor(self, registry: Registry, providers: dict[str, Provider]) -> Router:
        """The router for a reloaded registry: same clock and random source, and the health of
        every route that did not change."""
        return Router(registry, providers, clock=self._clock, rng=self._rng, previous=self)

    def _unchanged(self, route: Route, registry: Registry) -> bool:
        """Same route (provider, upstream model, policy, ...) on the same provider config?"""
        mine = self._routes.get(route.key)
        return (
            mine is not None
            and all(getattr(mine, name) == getattr(route, name) for name in Route.__slots__)
            and self._registry.providers[route.provider] == registry.providers[route.provider]
        )

    def health(self, route: Route) -> RouteHealth:
        return self._health[route.key]

    def latency(self, route: Route) -> RouteLatency:
        return self._latency[route.key]

    def route_order(self, job: EmbeddingJob) -> list[Route]:
        return order_routes(
            job.model.config.strategy,
            job.model.usable_routes,
            cooling=lambda route: self._health[route.key].is_open,
            latency=lambda route: self._latency[route.key].ewma,
            rng=self._rng,
        )

    async def embed(self, job: EmbeddingJob, timeout: float) -> RoutedResult:
        deadline = self._clock() + timeout
        attempt = _JobAttempt(job)
        routes = self.route_order(job)
        try:
            async with asyncio.timeout(timeout):
                for position, route in enumerate(routes):
                    if not attempt.pending:
                        break
                    health = self._health[route.key]
                    if not health.admit():
                        attempt.skipped.append(self._providers[route.provider].display_name)
                        continue
                    later = [r for r in routes[position + 1 :] if self._health[r.key].may_admit()]
                    await self._run_route(route, later, attempt, deadline)
        except TimeoutError:
            raise upstream_timeout(
                f"No upstream answered for model '{job.model.id}' within {timeout:g}s"
                + attempt.tried_suffix()
            ) from None
        if attempt.pending:
            raise attempt.final_error()
        return RoutedResult(attempt.vectors, attempt.upstream_tokens(), attempt.hedge_tokens)

    async def _run_route(
        self, route: Route, later: list[Route], attempt: _JobAttempt, deadline: float
    ) -> None:
        job = attempt.job
        job.trace.providers.append(route.provider)
        inputs = _inputs_for(route, job)
        chunks = _split(attempt.pending, route, job)
        gate = asyncio.Semaphore(route.policy.max_concurrency_per_request)

        async def run(chunk: list[int]) -> None:
            async with gate:
                outcome = await self._call_with_retries(
                    route, later, chunk, [inputs[i] for i in chunk], attempt, deadline
                )
            if isinstance(outcome, UpstreamError):
                attempt.errors.append(outcome)
                return
            result = checked_usage(outcome.result, job, chunk, outcome.route.provider)
            attempt.record(chunk, result)
            tokens = result.prompt_tokens
            if tokens is None:
                counts = job.token_counts()
                tokens = sum(counts[i] for i in chunk)
            metrics.TOKENS.labels(job.model.id, outcome.route.provider).inc(tokens)

        if len(chunks) == 1:  # the common case: no tasks to spawn
            await run(chunks[0])
            return
        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(run(chunk))
        except* GatewayError as group_error:
            raise group_error.exceptions[0] from None

    async def _call_with_retries(
        self,
        route: Route,
        later: list[Route],
        chunk: list[int],
        inputs: Inputs,
        attempt: _JobAttempt,
        deadline: float,
    ) -> _Served | UpstreamError:
        policy = route.policy
        health = self._health[route.key]
        tokens = estimated_tokens(inputs)
        error: UpstreamError | None = None
        for number in range(policy.max_attempts):
            timeout = call_timeout(policy, tokens, deadline - self._clock(), len(later))
            try:
                return await self._attempt(route, later, chunk, inputs, attempt, timeout, deadline)
            except UpstreamError as exc:
                error = exc
                if exc.failure is Failure.BAD_REQUEST:
                    raise GatewayError(
                        400,
                        f"{self._display_name(exc.provider)} rejected the input: {exc.detail}",
                        param="input",
                        code="upstream_rejected_input",
                    ) from None
                if exc.failure is Failure.TIMEOUT and later:
                    break  # a hung upstream would hang again: give the time to the next route
                if not exc.failure.retryable or number + 1 == policy.max_attempts:
                    break
                wait = self._wait_before_retry(exc, number, policy.backoff_base_seconds)
                if wait >= deadline - self._clock():
                    break  # the upstream asks for more time than is left: fail over now
                await asyncio.sleep(wait)
                if health.is_open:
                    break  # the route went into cooldown while we waited: fail over
        assert error is not None
        return error

    async def _attempt(
        self,
        route: Route,
        later: list[Route],
        chunk: list[int],
        inputs: Inputs,
        attempt: _JobAttempt,
        timeout: float,
        deadline: float,
    ) -> _Served:
        """One call on `route`, hedged on a later route if it is slow and the budget allows."""
        job = attempt.job
        delay = hedge_delay(route.policy, self._latency[route.key])
        if delay is not None:
            self._budgets[route.key].record_call()
        target = self._hedge_target(later, chunk, job) if delay is not None else None
        if target is None or delay is None or delay >= timeout:
            return _Served(await self._call(route, inputs, job, timeout), route)
        primary = asyncio.create_task(self._call(route, inputs, job, timeout))
        calls = {primary: route}
        try:
            done, _ = await asyncio.wait({primary}, timeout=delay)
            if done or self._health[target.key].is_open:
                return _Served(await primary, route)
            if not self._budgets[route.key].try_hedge():
                return _Served(await primary, route)
            hedge_inputs: Inputs = [_inputs_for(target, job)[i] for i in chunk]  # type: ignore[misc]
            left = deadline - self._clock()
            hedge_timeout = call_timeout(target.policy, estimated_tokens(hedge_inputs), left, 0)
            job.trace.providers.append(target.provider)
            hedge = asyncio.create_task(self._call(target, hedge_inputs, job, hedge_timeout))
            calls[hedge] = target
            return await self._first_valid(calls, primary, chunk, attempt)
        finally:
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    async def _first_valid(
        self,
        calls: dict[asyncio.Task[UpstreamResult], Route],
        primary: asyncio.Task[UpstreamResult],
        chunk: list[int],
        attempt: _JobAttempt,
    ) -> _Served:
        """The first call of a hedged pair to answer validly wins; the other is cancelled."""
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
        job = attempt.job
        for task, route in calls.items():
            if task is winner:
                outcome = "won"
            elif not task.done():
                task.cancel()
                outcome = "cancelled"
                # Sent, so possibly billed: counted at our own token count (it reported none).
                counts = job.token_counts()
                self._count_unused(route, job, attempt, sum(counts[i] for i in chunk))
            else:
                outcome = "lost"
                if not task.cancelled() and task.exception() is None:
                    result = task.result()
                    counts = job.token_counts()
                    tokens = result.prompt_tokens
                    if tokens is None:
                        tokens = sum(counts[i] for i in chunk)
                    self._count_unused(route, job, attempt, tokens)
            metrics.HEDGED_CALLS.labels(job.model.id, route.provider, outcome).inc()
        if winner is not None:
            return _Served(winner.result(), calls[winner])
        if rejected is not None:
            raise rejected
        for task, error in errors.items():
            if task is not primary:
                attempt.errors.append(error)  # the primary's error goes back to the retry loop
        raise errors.get(primary) or next(iter(errors.values()))

    @staticmethod
    def _count_unused(route: Route, job: EmbeddingJob, attempt: _JobAttempt, tokens: int) -> None:
        attempt.hedge_tokens += tokens
        metrics.TOKENS.labels(job.model.id, route.provider).inc(tokens)

    def _hedge_target(
        self, later: list[Route], chunk: list[int], job: EmbeddingJob
    ) -> Route | None:
        """The next route that is healthy and takes this chunk in one call."""
        for route in later:
            policy = route.policy
            if self._health[route.key].is_open or len(chunk) > policy.max_batch_size:
                continue
            if policy.max_tokens_per_call is not None:
                counts = job.token_counts()
                if sum(counts[i] for i in chunk) > policy.max_tokens_per_call:
                    continue
            return route
        return None

    async def _call(
        self, route: Route, inputs: Inputs, job: EmbeddingJob, timeout: float
    ) -> UpstreamResult:
        """One upstream call, with its metrics, latency and health; raises UpstreamError."""
        provider = self._providers[route.provider]
        health = self._health[route.key]
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
        )
        started = self._clock()
        try:
            async with self._provider_slots[route.provider]:
                result = await provider.embed(call)
        except UpstreamError as exc:
            elapsed = self._observe(route, job, started, exc.failure.name.lower())
            if exc.failure is Failure.BAD_REQUEST:
                health.neutral()
                raise
            if exc.failure is Failure.TIMEOUT:
                self._latency[route.key].observe(elapsed)  # slow is what least-latency avoids
            health.failure()
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
            self._latency[route.key].observe(self._observe(route, job, started, "cancelled"))
            health.neutral()
            raise
        self._latency[route.key].observe(self._observe(route, job, started, "ok"))
        health.success()
        if local:
            result.vectors = shorten(result.vectors, job.expected_dims)
        return result

    def _observe(self, route: Route, job: EmbeddingJob, started: float, outcome: str) -> float:
        elapsed = self._clock() - started
        job.trace.seconds += elapsed
        metrics.UPSTREAM_SECONDS.labels(route.provider).observe(elapsed)
        metrics.UPSTREAM_CALLS.labels(route.provider, route.model_id, outcome).inc()
        return elapsed

    def _display_name(self, provider: str) -> str:
        found = self._providers.get(provider)
        return found.display_name if found is not None else provider

    @staticmethod
    def _wait_before_retry(error: UpstreamError, number: int, base: float) -> float:
        if error.retry_after is not None:
            return error.retry_after
        ceiling = base * (2**number)
        return random.uniform(ceiling / 2, ceiling)  # exponential backoff, "equal jitter"


def _inputs_for(route: Route, job: EmbeddingJob) -> Inputs:
    if route.accepts_token_ids and job.token_ids is not None:
        return job.token_ids  # a route that takes token IDs takes text too
    try:
        return job.as_text()
    except UndecodableTokens as exc:
        raise invalid_request(str(exc), param="input") from None


class _JobAttempt:
    """What is done and what is pending for one job as it moves across routes."""

    def __init__(self, job: EmbeddingJob) -> None:
        self.job = job
        self.pending: list[int] = list(range(len(job)))
        self.vectors = np.empty((len(job), job.expected_dims), dtype=np.float32)
        self.skipped: list[str] = []
        self.errors: list[UpstreamError] = []
        self.hedge_tokens = 0
        self._tokens: int | None = 0

    def record(self, chunk: list[int], outcome: UpstreamResult) -> None:
        self.vectors[chunk] = outcome.vectors
        done = set(chunk)
        self.pending = [i for i in self.pending if i not in done]
        if self._tokens is not None and outcome.prompt_tokens is not None:
            self._tokens += outcome.prompt_tokens
        else:
            self._tokens = None

    def upstream_tokens(self) -> int | None:
        return self._tokens

    def tried_suffix(self) -> str:
        details = [e.detail for e in _latest_per_provider(self.errors)]
        return f" ({'; '.join(details)})" if details else ""

    def final_error(self) -> GatewayError:
        model_id = self.job.model.id
        if not self.errors:
            skipped = ", ".join(self.skipped) or "none"
            return GatewayError(
                503,
                f"Every route for model '{model_id}' is cooling down after repeated failures "
                f"({skipped}); try again shortly",
                type="upstream_error",
                code="routes_unavailable",
                headers={"retry-after": "1"},
            )
        summary = "; ".join(e.detail for e in _latest_per_provider(self.errors))
        message = f"Upstream failure for model '{model_id}': {summary}"
        if all(e.failure is Failure.TIMEOUT for e in self.errors):
            return upstream_timeout(message)
        error = upstream_failure(message)
        if all(e.failure is Failure.AUTH for e in self.errors):
            error.headers["x-should-retry"] = "false"  # a retry cannot fix the gateway's keys
        return error


def _latest_per_provider(errors: list[UpstreamError]) -> list[UpstreamError]:
    latest: dict[str, UpstreamError] = {}
    for error in errors:
        latest.pop(error.provider, None)
        latest[error.provider] = error
    return list(latest.values())


def _split(pending: list[int], route: Route, job: EmbeddingJob) -> list[list[int]]:
    """Chunks of at most max_batch_size items and, if set, max_tokens_per_call tokens."""
    size = route.policy.max_batch_size
    token_cap = route.policy.max_tokens_per_call
    if token_cap is None:
        return [pending[i : i + size] for i in range(0, len(pending), size)]
    counts = job.token_counts()
    chunks: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in pending:
        if current and (len(current) == size or tokens + counts[index] > token_cap):
            chunks.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += counts[index]
    if current:
        chunks.append(current)
    return chunks
