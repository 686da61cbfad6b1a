"""Embed a job at the least upstream cost: cache hits, in-batch duplicates and identical
in-flight inputs are never sent twice; only what is left goes to routing.

Every input item is identified by the same key the cache uses (model, fingerprint, width,
input_type, hash of the exact input). Items are resolved in three steps — the cache (unless
the client said `Cache-Control: no-cache`), an identical item another request in this process is
already fetching, and finally one routed upstream call for the rest — then put back in
input order. A vector is only ever copied from the item that produced it, by key, so a mixed
hit/miss batch cannot shuffle or duplicate vectors.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from app import metrics
from app.cache import EmbeddingCache, item_digest, item_key
from app.errors import DomainError
from app.jobs import EmbeddingJob
from app.routing import Router
from app.trace import UpstreamTrace


class CacheStatus(Enum):
    HIT = "hit"
    MISS = "miss"
    PARTIAL = "partial"


@dataclass(slots=True)
class Embedded:
    vectors: np.ndarray  # (len(job), expected_dims) float32, input order
    prompt_tokens: int  # what the client sent
    upstream_tokens: int  # what was sent (and billed) upstream for this request
    cached_tokens: int  # tokens of the items the cache answered
    cache_status: CacheStatus | None  # None when the cache does not apply to this request
    trace: UpstreamTrace  # what reaching the upstreams cost (empty when nothing was routed)


class Embedder:
    @property
    def cache(self) -> EmbeddingCache | None:
        return self._cache

    def __init__(self, router: Router, cache: EmbeddingCache | None) -> None:
        self._router = router
        self._cache = cache
        self._in_flight: dict[str, asyncio.Future[np.ndarray]] = {}

    async def embed(self, job: EmbeddingJob, timeout: float, *, read_cache: bool) -> Embedded:
        """The job's vectors and what they cost. A DomainError from routing this request's own
        items carries its `trace`; one shared from an identical in-flight request carries that
        request's (the calls this one waited on)."""
        dims = job.expected_dims
        cache = self._cache if job.model.config.cache else None
        keys = [
            item_key(job.model, dims, item_digest(job.item(i)), job.input_type)
            for i in range(len(job))
        ]
        first: dict[str, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)

        found: dict[str, np.ndarray] = {}
        if cache is not None and read_cache:
            unique = list(first)
            for key, vector in zip(unique, await cache.get_many(unique, dims), strict=True):
                if vector is not None:
                    found[key] = vector
        hits = set(found)
        missing = [key for key in first if key not in found]

        upstream = _UpstreamCost()
        if missing:
            fetched = await self._fetch(job, missing, first, timeout, upstream)
            found.update(fetched)
            if cache is not None:
                await cache.put(fetched)  # queued: written after the response, in batches

        vectors = np.empty((len(job), dims), dtype=np.float32)
        for index, key in enumerate(keys):
            vectors[index] = found[key]
        cached_tokens = 0
        if hits:
            cached_tokens = job.tokens_of([i for i, key in enumerate(keys) if key in hits])
        status = None
        if cache is not None:
            metrics.CACHE_LOOKUPS.labels(job.model.id, "hit").inc(len(hits))
            metrics.CACHE_LOOKUPS.labels(job.model.id, "miss").inc(len(first) - len(hits))
            status = _status(len(hits), len(first))
        # The upstream's own count when it saw exactly the client's input, else ours.
        prompt_tokens = job.billed_tokens(upstream.whole_job_tokens)
        return Embedded(
            vectors, prompt_tokens, upstream.tokens, cached_tokens, status, upstream.trace
        )

    async def _fetch(
        self,
        job: EmbeddingJob,
        missing: list[str],
        first: dict[str, int],
        timeout: float,
        upstream: _UpstreamCost,
    ) -> dict[str, np.ndarray]:
        """Vectors for `missing` keys: joined to identical in-flight work, or routed upstream."""
        loop = asyncio.get_running_loop()
        owned: list[str] = []
        joined: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        for key in missing:
            future = self._in_flight.get(key)
            if future is None:
                future = loop.create_future()
                future.add_done_callback(_retrieve_exception)
                self._in_flight[key] = future
                owned.append(key)
            else:
                joined.append((key, future))

        vectors: dict[str, np.ndarray] = {}
        try:
            if owned:
                routed = await self._route(job, owned, first, timeout, upstream)
                for key in owned:
                    self._in_flight[key].set_result(routed[key])
                vectors.update(routed)
        except BaseException as exc:
            for key in owned:
                future = self._in_flight[key]
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)  # joiners fail the same way: same input
                else:
                    future.cancel()  # we were cancelled: joiners fetch for themselves
            raise
        finally:
            for key in owned:
                self._in_flight.pop(key, None)

        orphans: list[str] = []
        for key, future in joined:
            try:
                vectors[key] = await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this request itself is being cancelled
                orphans.append(key)  # the request we waited on went away: fetch it ourselves
        if orphans:
            vectors.update(await self._route(job, orphans, first, timeout, upstream))
        return vectors

    async def _route(
        self,
        job: EmbeddingJob,
        keys: list[str],
        first: dict[str, int],
        timeout: float,
        upstream: _UpstreamCost,
    ) -> dict[str, np.ndarray]:
        indices = [first[key] for key in keys]
        whole = len(indices) == len(job)
        part = job if whole else job.subset(indices)
        try:
            result = await self._router.embed(part, timeout)
        except DomainError as error:
            if error.trace is not None:
                upstream.trace.add(error.trace)
            error.trace = upstream.trace  # with this request's earlier calls, if any
            raise
        upstream.trace.add(result.trace)
        tokens = result.upstream_tokens
        if whole:
            upstream.whole_job_tokens = tokens
        upstream.tokens += part.billed_tokens(tokens)
        upstream.tokens += result.hedge_tokens  # hedges that lost were sent, so may be billed
        return dict(zip(keys, result.vectors, strict=True))


@dataclass(slots=True)
class _UpstreamCost:
    tokens: int = 0  # sent upstream by this request (upstream's count, else ours)
    whole_job_tokens: int | None = None  # the upstream's count when it saw the whole input
    trace: UpstreamTrace = field(default_factory=UpstreamTrace)


def _status(hits: int, unique: int) -> CacheStatus:
    if hits == 0:
        return CacheStatus.MISS
    return CacheStatus.HIT if hits == unique else CacheStatus.PARTIAL


def _retrieve_exception(future: asyncio.Future[np.ndarray]) -> None:
    # A failure nobody joined must not be reported as "exception never retrieved".
    if not future.cancelled():
        future.exception()
