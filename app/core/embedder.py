"""Embed a job at the least upstream cost: cache hits, in-batch duplicates and identical
in-flight inputs are never sent twice; only what is left goes to routing.

Every input item is identified by the same key the cache uses (model, fingerprint, width,
input_type, hash of the exact input); for a model without the cache, a short text is its own
key, not hashed. Items are resolved in three steps — the cache (unless
the client said `Cache-Control: no-cache`), an identical item another request in this process is
already fetching, and finally one routed upstream call for the rest — then put back in
input order. A vector is only ever copied from the item that produced it, by key, so a mixed
hit/miss batch cannot shuffle or duplicate vectors.

Each item also carries the tokens it counts for: its share of the usage the upstream reported
for its call (app/core/token_accounting.py), kept with its cached vector, so `prompt_tokens` is
the same whether an item was a hit, a miss or coalesced. Where there is no such share (the
upstream reported no usage, or the entry predates the count) the item counts at the gateway's
own count.

With tracing on (app/tracing), the cache lookup and the key's policy check (from when the
embedder takes it over until it has answered) are spans of the request's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import numpy as np

from app import metrics, tracing
from app.core.errors import RoutingError
from app.core.job import EmbeddingJob
from app.core.routing.router import RoutedResult, Router
from app.core.token_accounting import ItemTokens
from app.core.upstream_cost import UpstreamCost
from app.state.cache import CacheEntry, EmbeddingCache, item_digest, item_key


class CacheStatus(Enum):
    HIT = "hit"
    MISS = "miss"
    PARTIAL = "partial"


@dataclass(slots=True)
class Embedded:
    vectors: np.ndarray  # (len(job), expected_dims) float32, input order
    prompt_tokens: int  # what the client sent, each item at its share of an upstream's count
    upstream_tokens: int  # what was sent (and billed) upstream for this request
    cached_tokens: int  # the part of prompt_tokens the cache answered
    cache_status: CacheStatus | None  # None when the cache does not apply to this request
    cost: UpstreamCost  # what reaching the upstreams cost (empty when nothing was routed)
    # With `embed(per_item=True)`: each item's tokens (its share, as `prompt_tokens` counts
    # it) and whether the cache answered it. The Batch API embeds many lines as one job and
    # gives each line the usage of its own items.
    item_tokens: list[int] | None = None
    item_cached: list[bool] | None = None


class Embedder:
    @property
    def cache(self) -> EmbeddingCache | None:
        return self._cache

    def __init__(self, router: Router, cache: EmbeddingCache | None) -> None:
        self._router = router
        self._cache = cache
        # Each item being routed: the future of the routing that carries it (items to vectors).
        self._in_flight: dict[str, asyncio.Future[_Routed]] = {}

    async def embed(
        self,
        job: EmbeddingJob,
        timeout: float,
        *,
        read_cache: bool,
        admitted: Awaitable[object] | None = None,
        per_item: bool = False,
    ) -> Embedded:
        """The job's vectors and what they cost. A RoutingError from routing this request's own
        items carries its `cost`; one shared from an identical in-flight request carries that
        request's (the calls this one waited on).

        `admitted`: the caller's policy check, already on its way: it runs beside the cache
        lookup (both are a Redis round trip: one of wall time, not two), and nothing goes
        upstream or is answered before it passes; what it raises, `embed` raises."""
        dims = job.expected_dims
        cache = self._cache if job.model.config.cache else None
        keys = _item_keys(job, dims, cache is not None)
        first: dict[str, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)

        traced = tracing.active
        if traced is not None and admitted is not None:
            admitted = traced.watch("key policy check", admitted)
        found: dict[str, CacheEntry] = {}
        if cache is not None and read_cache:
            unique = list(first)
            span = None
            if traced is not None:
                span = traced.child("cache lookup", {"gateway.cache.items": len(unique)})
            try:
                for key, item in zip(unique, await cache.get_many(unique, dims), strict=True):
                    if item is not None:
                        found[key] = item
            finally:
                if traced is not None and span is not None:
                    traced.end(span, attributes={"gateway.cache.hits": len(found)})
        if admitted is not None:
            # Shielded: a client that goes away must not cut the check short, or what it
            # reserved could not be refunded (the caller awaits its outcome either way).
            await asyncio.shield(admitted)
        hits = set(found)
        missing = [key for key in first if key not in found]

        upstream = _UpstreamCost()
        if missing:
            fetched = await self._fetch(job, missing, first, timeout, upstream)
            if upstream.whole is None or cache is not None:  # else no item is asked for by key
                items_by_key = fetched.by_key()
                found.update(items_by_key)
                if cache is not None:
                    await cache.put(items_by_key)  # queued: written (shares split) later

        items: _PerItem | None = _PerItem([], []) if per_item else None
        if upstream.whole is not None:
            # Routed whole, in input order (no hit, no repeat, nothing joined): nothing to gather.
            vectors, prompt_tokens, items = _whole(job, upstream.whole, per_item)
            cached_tokens = 0
        else:
            vectors = np.empty((len(job), dims), dtype=np.float32)
            prompt_tokens, cached_tokens = _gather(job, keys, found, hits, vectors, items)
        status = None
        if cache is not None:
            metrics.CACHE_LOOKUPS.labels(job.model.id, "hit").inc(len(hits))
            metrics.CACHE_LOOKUPS.labels(job.model.id, "miss").inc(len(first) - len(hits))
            status = _status(len(hits), len(first))
        return Embedded(
            vectors,
            prompt_tokens,
            upstream.tokens,
            cached_tokens,
            status,
            upstream.cost,
            items.tokens if items is not None else None,
            items.cached if items is not None else None,
        )

    async def _fetch(
        self,
        job: EmbeddingJob,
        missing: list[str],
        first: dict[str, int],
        timeout: float,
        upstream: _UpstreamCost,
    ) -> _Fetch:
        """Items for `missing` keys: joined to identical in-flight work, or routed upstream.
        The keys this request routes share one future (a 2,048-input job is one future, not
        2,048), which identical items of other requests join."""
        in_flight = self._in_flight
        owned: list[str] = []
        joined: dict[asyncio.Future[_Routed], list[str]] = {}
        for key in missing:
            future = in_flight.get(key)
            if future is None:
                owned.append(key)
            else:
                joined.setdefault(future, []).append(key)

        fetch = _Fetch([], {})
        if owned:
            mine: asyncio.Future[_Routed] = asyncio.get_running_loop().create_future()
            mine.add_done_callback(_retrieve_exception)
            in_flight.update(dict.fromkeys(owned, mine))
            try:
                routed = await self._route(job, owned, first, timeout, upstream)
                mine.set_result(routed)
            except BaseException as exc:
                if not mine.done():
                    if isinstance(exc, Exception):
                        mine.set_exception(exc)  # joiners fail the same way: same input
                    else:
                        mine.cancel()  # we were cancelled: joiners fetch for themselves
                raise
            finally:
                for key in owned:
                    in_flight.pop(key, None)
            fetch.routed.append(routed)

        orphans: list[str] = []
        for future, keys in joined.items():
            try:
                theirs = await asyncio.shield(future)
            except asyncio.CancelledError:
                if not future.cancelled():
                    raise  # this request itself is being cancelled
                orphans += keys  # the request we waited on went away: fetch them ourselves
                continue
            for key in keys:
                fetch.joined[key] = theirs.by_key()[key]
        if orphans:
            # Gathered future by future, so out of input order; routed in it, as `_route` and
            # `_Routed` pair each key with the vector at its place in the routed job.
            orphans.sort(key=first.__getitem__)
            fetch.routed.append(await self._route(job, orphans, first, timeout, upstream))
        return fetch

    async def _route(
        self,
        job: EmbeddingJob,
        keys: list[str],
        first: dict[str, int],
        timeout: float,
        upstream: _UpstreamCost,
    ) -> _Routed:
        indices = [first[key] for key in keys]
        whole = len(indices) == len(job)
        part = job if whole else job.subset(indices)
        try:
            result = await self._router.embed(part, timeout)
        except RoutingError as error:
            if error.cost is not None:
                upstream.cost.add(error.cost)
            error.cost = upstream.cost  # with this request's earlier calls, if any
            raise
        upstream.cost.add(result.cost)
        tokens = result.upstream_tokens
        if whole:
            upstream.whole = result
        upstream.tokens += part.billed_tokens(tokens)
        upstream.tokens += result.hedge_tokens  # hedges that lost were sent, so may be billed
        return _Routed(keys, result)


# Uncached, a text up to this long is its own key (no hash); a longer one is keyed by its digest.
_RAW_KEY_CHARS = 128


def _item_keys(job: EmbeddingJob, dims: int, cached: bool) -> list[str]:
    """Each item's identity: the cache's key for a cached model. For one that is not, a key
    only ever compared in this process (identical items in flight), so a short text (most of
    them) is its own key, with no digest to compute (~1 µs an item); a long one, its digest."""
    model, input_type = job.model, job.input_type
    texts = job.texts
    if cached or texts is None:
        return [
            item_key(model, dims, item_digest(job.item(i)), input_type) for i in range(len(job))
        ]
    # Never a cache key: those start with the model's id, these with a NUL.
    prefix = f"\x00{model.id}:{model.fingerprint}:{dims}:{input_type or ''}:"
    raw, digested = prefix + "t", prefix + "h"
    return [
        raw + text if len(text) <= _RAW_KEY_CHARS else digested + item_digest(text)
        for text in texts
    ]


class _Fetched(NamedTuple):
    """One item fresh from an upstream call, as its request and any coalesced with it see it."""

    vector: np.ndarray
    shares: ItemTokens | None  # of the routed job; None when its upstream reported no usage
    position: int  # the item's index in that routed job

    @property
    def tokens(self) -> int | None:
        return None if self.shares is None else self.shares[self.position]


class _Routed:
    """One routing's items (`keys`, in the routed job's order), by key only when asked: a job
    routed whole that nobody joined takes the routed vectors as they are (`_whole`)."""

    __slots__ = ("_by_key", "keys", "result")

    def __init__(self, keys: list[str], result: RoutedResult) -> None:
        self.keys = keys
        self.result = result
        self._by_key: dict[str, _Fetched] | None = None

    def by_key(self) -> dict[str, _Fetched]:
        if self._by_key is None:
            shares = self.result.item_tokens
            self._by_key = {
                key: _Fetched(vector, shares, position)
                for position, (key, vector) in enumerate(
                    zip(self.keys, self.result.vectors, strict=True)
                )
            }
        return self._by_key


@dataclass(slots=True)
class _Fetch:
    """What `_fetch` got: this request's routings, and the items it joined."""

    routed: list[_Routed]
    joined: dict[str, _Fetched]

    def by_key(self) -> dict[str, _Fetched]:
        items = dict(self.joined)
        for routed in self.routed:
            items.update(routed.by_key())
        return items


class _PerItem(NamedTuple):
    tokens: list[int]
    cached: list[bool]


def _gather(
    job: EmbeddingJob,
    keys: list[str],
    found: dict[str, CacheEntry],
    hits: set[str],
    vectors: np.ndarray,
    items: _PerItem | None = None,
) -> tuple[int, int]:
    """Fill `vectors` in input order and count the job's tokens, every occurrence of an item at
    its kept count (its share of an upstream's), else the gateway's own: (prompt, cached).
    `items`: filled with each item's tokens and whether it was a hit."""
    prompt = cached = 0
    uncounted: list[int] = []
    uncounted_hits: list[int] = []
    for index, key in enumerate(keys):
        item = found[key]
        vectors[index] = item.vector
        tokens = item.tokens
        hit = key in hits
        if items is not None:
            items.cached.append(hit)
            items.tokens.append(0 if tokens is None else tokens)
        if tokens is None:
            uncounted.append(index)
            if hit:
                uncounted_hits.append(index)
            continue
        prompt += tokens
        if hit:
            cached += tokens
    if uncounted:
        prompt += job.tokens_of(uncounted)
        cached += job.tokens_of(uncounted_hits)
        if items is not None:
            counts = job.token_counts()
            for index in uncounted:
                items.tokens[index] = counts[index]
    return prompt, cached


def _whole(
    job: EmbeddingJob, routed: RoutedResult, per_item: bool
) -> tuple[np.ndarray, int, _PerItem | None]:
    """The job's vectors, tokens and (`per_item`) each item's, when it was routed whole: the
    upstream's count, with no share to add (else the gateway's own), and each item its share of
    it (as `_gather` would give it, item by item)."""
    shares = routed.item_tokens
    tokens = routed.upstream_tokens
    prompt = tokens if tokens is not None else job.prompt_tokens()
    if not per_item:
        return routed.vectors, prompt, None
    each = shares.as_list() if shares is not None else list(job.token_counts())
    return routed.vectors, prompt, _PerItem(each, [False] * len(each))


@dataclass(slots=True)
class _UpstreamCost:
    tokens: int = 0  # sent upstream by this request (upstream's count, else ours)
    whole: RoutedResult | None = None  # the one routing of the whole input, when it was so
    cost: UpstreamCost = field(default_factory=UpstreamCost)


def _status(hits: int, unique: int) -> CacheStatus:
    if hits == 0:
        return CacheStatus.MISS
    return CacheStatus.HIT if hits == unique else CacheStatus.PARTIAL


def _retrieve_exception(future: asyncio.Future[_Routed]) -> None:
    # A failure nobody joined must not be reported as "exception never retrieved".
    if not future.cancelled():
        future.exception()
