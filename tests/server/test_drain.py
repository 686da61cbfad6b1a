"""Graceful shutdown of the real CLI with several workers: SIGTERM keeps serving for the delay
with /readyz 503, then finishes what it accepted and flushes usage; SIGINT skips the delay."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream
from tests.harness import GatewayProcess, ThreadedGateway, model_entry, write_registry
from tests.steady_load import AUTH, MODEL, Load

UPSTREAM_KEY = "drain-upstream-key"
DELAY = 2.0  # SHUTDOWN_DELAY_SECONDS
GRACE = 10.0  # SHUTDOWN_GRACE_SECONDS
WORKERS = 2


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY, record=False) as fake:
        yield fake


@pytest.fixture
def registry(tmp_path: Path, upstream: FakeUpstream) -> Path:
    providers = {"up": {"type": "openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}}
    models = {MODEL: model_entry([{"provider": "up", "model": "m"}])}
    return write_registry(tmp_path / "models.yaml", providers, models)


def gateway_env(registry: Path, redis_url: str, usage_prefix: str, **extra: str) -> dict[str, str]:
    return {
        "MODELS_CONFIG": str(registry),
        "WORKERS": str(WORKERS),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_TOKEN": "",
        "GATEWAY_INTERNAL_TOKEN": "",
        "RATE_LIMIT_PER_SECOND": "0",
        "AUTH_FAILURES_PER_MINUTE": "0",
        "REDIS_URL": redis_url,
        "CACHE_ENABLED": "false",
        "USAGE_KEY_PREFIX": usage_prefix,
        "SHUTDOWN_DELAY_SECONDS": str(DELAY),
        "SHUTDOWN_GRACE_SECONDS": str(GRACE),
        "LOG_LEVEL": "info",
        **extra,
    }


def started(gateway: GatewayProcess) -> GatewayProcess:
    gateway.start()
    deadline = time.monotonic() + 30
    while gateway.output().count("Application startup complete") < WORKERS:
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    return gateway


def usage_requests(redis_url: str, usage_prefix: str, registry: Path) -> int:
    """What a fresh gateway on the same Redis reports for the client key."""
    with ThreadedGateway(
        MODELS_CONFIG=str(registry),
        GATEWAY_API_KEYS=CLIENT_KEY,
        REDIS_URL=redis_url,
        USAGE_KEY_PREFIX=usage_prefix,
        RATE_LIMIT_PER_SECOND=0,
    ) as reader:
        report = httpx.get(f"{reader.url}/v1/usage", headers=AUTH, timeout=10).json()
    return report["total"]["requests"]


def test_sigterm_serves_through_the_delay_then_finishes_and_flushes_usage(
    registry, redis_server, upstream
):
    upstream.latency = 0.01
    prefix = f"egw:drain:{uuid.uuid4().hex[:8]}:"
    gateway = started(GatewayProcess(gateway_env(registry, redis_server.url, prefix)))
    try:
        assert httpx.get(f"{gateway.url}/readyz", timeout=5).status_code == 200
        with Load(gateway.url) as load:
            time.sleep(0.5)
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.3)
            readiness = httpx.get(f"{gateway.url}/readyz", timeout=5)
            # Load for the second after the signal, well inside the delay.
            time.sleep(max(0.0, signalled + 1.0 - time.monotonic()))
        code = gateway.process.wait(timeout=DELAY + GRACE + 15)
        stopped = time.monotonic() - signalled
    finally:
        gateway.stop()
    assert readiness.status_code == 503, readiness.text
    assert readiness.json()["error"]["code"] == "not_ready"
    after = load.sent_between(signalled, signalled + 1.0)
    assert len(after) >= 10, gateway.output()  # the load went on after the signal
    failed = [o.result for o in load.outcomes if o.result != "200"]
    assert failed == [], (failed, gateway.output()[-3000:])
    # Served new requests for the delay, then stopped well within delay + grace.
    assert DELAY * 0.9 <= stopped <= DELAY + GRACE, stopped
    assert code in (0, -signal.SIGTERM), gateway.output()[-2000:]
    # Every answered request was counted, the last ones by the flush at exit.
    assert usage_requests(redis_server.url, prefix, registry) == len(load.outcomes)


def test_sigint_skips_the_delay_but_finishes_accepted_requests(registry, redis_server, upstream):
    upstream.latency = 1.5  # an accepted request still upstream when the signal arrives
    prefix = f"egw:drain:{uuid.uuid4().hex[:8]}:"
    env = gateway_env(registry, redis_server.url, prefix, SHUTDOWN_DELAY_SECONDS="60")
    gateway = started(GatewayProcess(env))
    try:
        with Load(gateway.url, clients=2, most=2) as load:
            time.sleep(0.7)
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            load.until = 0  # nothing new; the two in flight must still be answered
        gateway.process.wait(timeout=GRACE + 15)
        stopped = time.monotonic() - signalled
    finally:
        upstream.latency = 0.0
        gateway.stop()
    assert [o.result for o in load.outcomes] == ["200", "200"], gateway.output()[-3000:]
    assert stopped < 60 / 2, stopped  # far sooner than SHUTDOWN_DELAY_SECONDS
    assert usage_requests(redis_server.url, prefix, registry) == 2
