"""One job's progress across routes: what is done, what is pending, what failed and what it
cost; and how its items are shaped (text or token IDs) and chunked for one route."""

from __future__ import annotations

import numpy as np

from app import metrics
from app.config.registry import Route
from app.core.errors import RoutesCoolingDown, RoutingError, UndecodableInput, UpstreamsFailed
from app.core.job import EmbeddingJob
from app.core.token_accounting import ItemTokens
from app.core.tokens import UndecodableTokens
from app.core.upstream_cost import UpstreamCost
from app.providers import Failure, UpstreamError, UpstreamResult

Inputs = list[str] | list[list[int]]


def inputs_for(route: Route, job: EmbeddingJob) -> Inputs:
    if route.accepts_token_ids and job.token_ids is not None:
        return job.token_ids  # a route that takes token IDs takes text too
    try:
        return job.as_text()
    except UndecodableTokens as exc:
        raise UndecodableInput(str(exc)) from None


class JobProgress:
    """What is done and what is pending for one job as it moves across routes."""

    def __init__(self, job: EmbeddingJob) -> None:
        self.job = job
        self.pending: list[int] = list(range(len(job)))
        self.vectors = np.empty((len(job), job.expected_dims), dtype=np.float32)
        self.skipped: list[str] = []
        self.errors: list[UpstreamError] = []
        self.hedge_tokens = 0
        self.cost = UpstreamCost()
        # Each call's items and the tokens it reported; None once a call reported none.
        self._usage: list[tuple[list[int], int]] | None = []

    def count_unused(self, route: Route, tokens: int) -> None:
        """A call sent upstream whose answer was not used (a hedge that lost): billed too."""
        self.hedge_tokens += tokens
        metrics.TOKENS.labels(self.job.model.id, route.provider).inc(tokens)

    def record(self, chunk: list[int], outcome: UpstreamResult) -> None:
        self.vectors[chunk] = outcome.vectors
        done = set(chunk)
        self.pending = [i for i in self.pending if i not in done]
        if self._usage is not None and outcome.prompt_tokens is not None:
            self._usage.append((chunk, outcome.prompt_tokens))
        else:
            self._usage = None

    def upstream_tokens(self) -> int | None:
        """The calls' reported usage, summed; None if any call reported none."""
        return None if self._usage is None else sum(tokens for _, tokens in self._usage)

    def item_tokens(self) -> ItemTokens | None:
        """Each item's share of its call's reported usage; None if any call reported none (the
        gateway's own count then applies to every item, as it does to the whole job)."""
        return None if self._usage is None else ItemTokens(self.job, self._usage)

    def error_details(self) -> list[str]:
        """The latest failure of each provider tried, for the client's message."""
        return [e.detail for e in _latest_per_provider(self.errors)]

    def final_error(self) -> RoutingError:
        model_id = self.job.model.id
        if not self.errors:
            return RoutesCoolingDown(model_id, self.skipped)
        return UpstreamsFailed(
            model_id,
            self.error_details(),
            timed_out=all(e.failure is Failure.TIMEOUT for e in self.errors),
            auth=all(e.failure is Failure.AUTH for e in self.errors),
        )


def _latest_per_provider(errors: list[UpstreamError]) -> list[UpstreamError]:
    latest: dict[str, UpstreamError] = {}
    for error in errors:
        latest.pop(error.provider, None)
        latest[error.provider] = error
    return list(latest.values())


def split(pending: list[int], route: Route, job: EmbeddingJob) -> list[list[int]]:
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
