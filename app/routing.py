"""Route choice, retries, failover, cooldowns and batch splitting for one embeddings job.

Items move through a model's routes in registry order. Each route gets the items still
pending, split into chunks it accepts; a chunk is retried on the same route with backoff
(or after the upstream's Retry-After, if that fits the deadline), and whatever still fails
moves to the next route. Only when every item has a vector does the job succeed: there is
no partial answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app import metrics
from app.errors import GatewayError, invalid_request, upstream_failure, upstream_timeout
from app.health import RouteHealth
from app.jobs import EmbeddingJob
from app.providers import Failure, Provider, UpstreamCall, UpstreamError, UpstreamResult
from app.registry import Registry, Route
from app.tokens import UndecodableTokens
from app.usage_check import checked_usage

log = logging.getLogger("app.routing")


@dataclass(slots=True)
class RoutedResult:
    vectors: np.ndarray  # (len(job), job.expected_dims) float32, input order
    upstream_tokens: int | None  # summed upstream usage, or None if any call did not report it


class Router:
    def __init__(
        self,
        registry: Registry,
        providers: dict[str, Provider],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._providers = providers
        self._clock = clock
        self._health = {
            route.key: RouteHealth(route, clock)
            for model in registry.models.values()
            for route in model.routes
        }
        self._provider_slots = {
            name: asyncio.Semaphore(config.max_concurrency)
            for name, config in registry.providers.items()
        }

    def health(self, route: Route) -> RouteHealth:
        return self._health[route.key]

    async def embed(self, job: EmbeddingJob, timeout: float) -> RoutedResult:
        deadline = self._clock() + timeout
        attempt = _JobAttempt(job)
        try:
            async with asyncio.timeout(timeout):
                for route in job.model.usable_routes:
                    if not attempt.pending:
                        break
                    health = self._health[route.key]
                    if not health.admit():
                        attempt.skipped.append(self._providers[route.provider].display_name)
                        continue
                    await self._run_route(route, attempt, deadline)
        except TimeoutError:
            raise upstream_timeout(
                f"No upstream answered for model '{job.model.id}' within {timeout:g}s"
                + attempt.tried_suffix()
            ) from None
        if attempt.pending:
            raise attempt.final_error()
        return RoutedResult(attempt.vectors, attempt.upstream_tokens())

    async def _run_route(self, route: Route, attempt: _JobAttempt, deadline: float) -> None:
        job = attempt.job
        provider = self._providers[route.provider]
        job.trace.providers.append(route.provider)
        inputs: list[str] | list[list[int]]
        if route.accepts_token_ids and job.token_ids is not None:
            inputs = job.token_ids  # a route that takes token IDs takes text too
        else:
            try:
                inputs = job.as_text()
            except UndecodableTokens as exc:
                raise invalid_request(str(exc), param="input") from None
        chunks = _split(attempt.pending, route, job)
        gate = asyncio.Semaphore(route.policy.max_concurrency_per_request)

        async def run(chunk: list[int]) -> None:
            async with gate:
                outcome = await self._call_with_retries(
                    route, provider, [inputs[i] for i in chunk], job, deadline
                )
            outcome = checked_usage(outcome, job, chunk, route.provider)
            attempt.record(chunk, outcome)
            if isinstance(outcome, UpstreamResult):
                tokens = outcome.prompt_tokens
                if tokens is None:
                    counts = job.token_counts()
                    tokens = sum(counts[i] for i in chunk)
                metrics.TOKENS.labels(job.model.id, route.provider).inc(tokens)

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
        provider: Provider,
        inputs: Sequence[str] | Sequence[list[int]],
        job: EmbeddingJob,
        deadline: float,
    ) -> UpstreamResult | UpstreamError:
        policy = route.policy
        health = self._health[route.key]
        error: UpstreamError | None = None
        for number in range(policy.max_attempts):
            remaining = deadline - self._clock()
            call = UpstreamCall(
                upstream_model=route.upstream_model,
                inputs=list(inputs),  # type: ignore[arg-type]
                dimensions=job.dimensions,
                user=job.user,
                expected_dims=job.expected_dims,
                want_base64=route.returns_base64,
                timeout=max(0.001, min(policy.timeout_seconds, remaining)),
                request_id=job.request_id,
            )
            started = time.perf_counter()
            try:
                async with self._provider_slots[route.provider]:
                    result = await provider.embed(call)
            except UpstreamError as exc:
                self._observe(route, job, started, exc.failure.name.lower())
                error = exc
                if exc.failure is Failure.BAD_REQUEST:
                    health.neutral()
                    raise GatewayError(
                        400,
                        f"{provider.display_name} rejected the input: {exc.detail}",
                        param="input",
                        code="upstream_rejected_input",
                    ) from None
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
                if not exc.failure.retryable or number + 1 == policy.max_attempts:
                    break
                wait = self._wait_before_retry(exc, number, policy.backoff_base_seconds)
                if wait >= deadline - self._clock():
                    break  # the upstream asks for more time than is left: fail over now
                await asyncio.sleep(wait)
                if health.is_open:
                    break  # the route went into cooldown while we waited: fail over
            else:
                self._observe(route, job, started, "ok")
                health.success()
                return result
        assert error is not None
        return error

    @staticmethod
    def _observe(route: Route, job: EmbeddingJob, started: float, outcome: str) -> None:
        elapsed = time.perf_counter() - started
        job.trace.seconds += elapsed
        metrics.UPSTREAM_SECONDS.labels(route.provider).observe(elapsed)
        metrics.UPSTREAM_CALLS.labels(route.provider, route.model_id, outcome).inc()

    @staticmethod
    def _wait_before_retry(error: UpstreamError, number: int, base: float) -> float:
        if error.retry_after is not None:
            return error.retry_after
        ceiling = base * (2**number)
        return random.uniform(ceiling / 2, ceiling)  # exponential backoff, "equal jitter"


class _JobAttempt:
    """What is done and what is pending for one job as it moves across routes."""

    def __init__(self, job: EmbeddingJob) -> None:
        self.job = job
        self.pending: list[int] = list(range(len(job)))
        self.vectors = np.empty((len(job), job.expected_dims), dtype=np.float32)
        self.skipped: list[str] = []
        self.errors: list[UpstreamError] = []
        self._tokens: int | None = 0

    def record(self, chunk: list[int], outcome: UpstreamResult | UpstreamError) -> None:
        if isinstance(outcome, UpstreamError):
            self.errors.append(outcome)
            return
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
        return upstream_failure(message)


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
