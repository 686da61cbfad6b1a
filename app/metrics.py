"""Prometheus metrics, under one prefix, with label values only from the registry or fixed sets.

With several uvicorn workers the CLI points PROMETHEUS_MULTIPROC_DIR at a fresh directory
before any worker starts, and /metrics aggregates every worker's files (prometheus-client's
multiprocess mode); with one process the default registry serves directly.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

PREFIX = "embeddings_gateway"
UNKNOWN = "unknown"  # the one label value for a model the registry does not have
NONE = "none"  # for requests that never named a model (model lists, bad JSON, 401s)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    f"{PREFIX}_requests_total", "API requests answered.", ["route", "model", "status"]
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_request_duration_seconds",
    "Time to answer an API request.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    f"{PREFIX}_in_flight_requests", "API requests being served.", multiprocess_mode="livesum"
)
UPSTREAM_CALLS = Counter(
    f"{PREFIX}_upstream_calls_total",
    "Calls to upstream providers, by outcome.",
    ["provider", "model", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    f"{PREFIX}_upstream_duration_seconds",
    "Time of one upstream call.",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
UPSTREAM_BATCH_SIZE = Histogram(
    f"{PREFIX}_upstream_batch_size",
    "Inputs per upstream call.",
    ["provider"],
    buckets=_BATCH_BUCKETS,
)
UPSTREAM_BATCH_REQUESTS = Histogram(
    f"{PREFIX}_upstream_batch_requests",
    "Client requests' chunks merged into one upstream call (1: not merged).",
    ["provider"],
    buckets=_BATCH_BUCKETS,
)
PACING_WAIT_SECONDS = Histogram(
    f"{PREFIX}_upstream_pacing_wait_seconds",
    "Time a call waited for its slot under the provider's max_requests_per_second.",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
BULK_LANE_WAIT_SECONDS = Histogram(
    f"{PREFIX}_bulk_lane_wait_seconds",
    "Time a bulk call (Batch API lines, keys with priority: bulk) waited behind interactive "
    "traffic for a call slot (stage=slot) or a pacing slot (stage=pacing).",
    ["provider", "stage"],
    buckets=_LATENCY_BUCKETS,
)
HEDGED_CALLS = Counter(
    f"{PREFIX}_hedged_calls_total",
    "Calls that took part in a hedged pair: won (its answer was used), lost (it ended without "
    "being used), cancelled (cut short when the other call won).",
    ["model", "provider", "outcome"],
)
TOKENS = Counter(
    f"{PREFIX}_tokens_total", "Input tokens embedded, by model and provider.", ["model", "provider"]
)
SPEND_USD = Counter(
    f"{PREFIX}_spend_usd",
    "Upstream spend in USD: tokens sent upstream at the registry's price, by model.",
    ["model"],
)
RATE_LIMITED = Counter(f"{PREFIX}_rate_limited_total", "Requests refused with 429.")
REDIS_ERRORS = Counter(
    f"{PREFIX}_redis_errors_total", "Redis calls that failed or timed out.", ["operation"]
)
BATCHED_WRITE_FAILURES = Counter(
    f"{PREFIX}_batched_write_failures_total",
    "Background writes of usage or managed keys' spend that failed (kept in process, retried).",
    ["ledger"],
)
CACHE_LOOKUPS = Counter(
    f"{PREFIX}_cache_lookups_total", "Embedding cache lookups per input item.", ["model", "result"]
)
CACHE_WRITES_DROPPED = Counter(
    f"{PREFIX}_cache_writes_dropped_total",
    "Vectors not cached because the background write queue (CACHE_WRITE_QUEUE) was full.",
)
ROUTE_COOLDOWN = Gauge(
    f"{PREFIX}_route_cooldown_open",
    "1 while a route is skipped after repeated failures.",
    ["model", "provider"],
    multiprocess_mode="livemax",
)

# The Batch API (docs/batches.md). The gauges are read from the batch store by every process's
# runner (all see the same store: livemax, not a sum across workers).
BATCHES = Gauge(
    f"{PREFIX}_batches",
    "Batches not finished yet, by status (validating, in_progress, finalizing, cancelling).",
    ["status"],
    multiprocess_mode="livemax",
)
BATCHES_FINISHED = Counter(
    f"{PREFIX}_batches_finished_total",
    "Batches that reached a final status (completed, failed, expired, cancelled).",
    ["status"],
)
BATCH_LINES = Counter(
    f"{PREFIX}_batch_lines_total",
    "Batch input lines done, by outcome: completed (output file), failed, expired, cancelled "
    "(error file).",
    ["outcome"],
)
# Exported at 0 from the start, so "no progress" (a flat series) is something to see.
for _outcome in ("completed", "failed", "expired", "cancelled"):
    BATCH_LINES.labels(_outcome)
    BATCHES_FINISHED.labels(_outcome)
BATCH_QUEUE_DEPTH = Gauge(
    f"{PREFIX}_batch_queue_depth",
    "Batch chunks not done yet: waiting for a worker or in one's hands.",
    multiprocess_mode="livemax",
)
BATCH_OLDEST_PENDING_SECONDS = Gauge(
    f"{PREFIX}_batch_oldest_pending_chunk_age_seconds",
    "Age of the oldest batch chunk not done yet (0: none).",
    multiprocess_mode="livemax",
)


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics, across all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        # prometheus-client ships no hints for this class
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
