"""What the tracing tests share: the registry, the gateway's environment, callers' trace
contexts, and checks on what the receiver (tests/otlp_receiver.py) got."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream
from tests.harness import GatewayProcess, model_entry, write_registry
from tests.keys_support import ADMIN_TOKEN
from tests.otlp_receiver import ReceivedSpan

UPSTREAM_KEY = "tracing-upstream-secret-0001"
SERVICE = "gateway-under-trace"
SECRET_INPUT = "confidential-input"  # in every input sent; never in a span
# What the SDK's import of the tracing parts looks like under PYTHONPROFILEIMPORTTIME.
SDK_IMPORTS = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "app.tracing.otel")


def write_tracing_registry(path: Path, upstream: FakeUpstream) -> Path:
    """Models whose routes make every kind of span: merged calls, retries, hedges, pacing,
    the bulk lane; all on `upstream` (providers `up`, `up2` and `paced` point at it)."""

    def provider(**knobs: object) -> dict[str, object]:
        return {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY, **knobs}

    def on(provider: str, model: str, **knobs: object) -> dict[str, object]:
        return {"provider": provider, "model": model, **knobs}

    models = {
        # One call in flight: what arrives meanwhile waits, and merges.
        "m": model_entry([on("up", "up-m", max_inflight_calls=1)]),
        "retried": model_entry([on("up", "up-retried", backoff_base_seconds=0.01)]),
        "hedged": model_entry(
            [on("up", "up-hedged", hedge_after_ms=50, hedge_max_ratio=1), on("up2", "up-hedged")]
        ),
        "paced": model_entry([on("paced", "up-paced")]),
        "bulk": model_entry([on("up", "up-bulk", max_inflight_calls=2)]),
    }
    providers = {
        "up": provider(),
        "up2": provider(),
        "paced": provider(max_requests_per_second=2),
    }
    return write_registry(path, providers, models)


def gateway_env(registry: Path, redis_url: str, **extra: str) -> dict[str, str]:
    prefix = f"egw:tracing-{uuid.uuid4().hex[:8]}:"
    return {
        "MODELS_CONFIG": str(registry),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_INTERNAL_TOKEN": "",
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": prefix + "cache:",
        "KEYS_KEY_PREFIX": prefix + "keys:",
        "RATE_LIMIT_KEY_PREFIX": prefix + "rl:",
        "USAGE_KEY_PREFIX": prefix + "usage:",
        "RATE_LIMIT_PER_SECOND": "0",
        "AUTH_FAILURES_PER_MINUTE": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "OTEL_SERVICE_NAME": SERVICE,
        # Every import and its time, to stderr (the process log): shows what was imported.
        "PYTHONPROFILEIMPORTTIME": "1",
        **extra,
    }


def new_context(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's (trace ID, span ID, traceparent)."""
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def texts(*labels: str) -> list[str]:
    run = uuid.uuid4().hex[:8]  # never cached by an earlier run on the same Redis
    return [f"{SECRET_INPUT} {label} {run}" for label in labels]


def embed(
    gateway: GatewayProcess, key: str, model: str, inputs: list[str], **headers: str
) -> httpx.Response:
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {key}", **headers},
        json={"model": model, "input": inputs, "encoding_format": "float"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def in_trace(trace_id: str, *wanted: str) -> Callable[[list[ReceivedSpan]], bool]:
    """Done once the trace has a span named each of `wanted` (as many times as listed)."""

    def done(spans: list[ReceivedSpan]) -> bool:
        names = [s.name for s in spans if s.trace_id == trace_id]
        return all(names.count(name) >= wanted.count(name) for name in wanted)

    return done


def one(spans: list[ReceivedSpan], **where: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.name, s.kind, s.trace_id) for s in spans])
    return found[0]


def assert_nothing_secret(spans: list[ReceivedSpan], *secrets: str) -> None:
    exported = "\n".join(text for span in spans for text in span.strings())
    for secret in (SECRET_INPUT, CLIENT_KEY, UPSTREAM_KEY, ADMIN_TOKEN, *secrets):
        assert secret not in exported


def log_lines(gateway: GatewayProcess) -> list[dict[str, object]]:
    # The process log also holds PYTHONPROFILEIMPORTTIME's lines: only the JSON ones are ours.
    return [json.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
