"""Registry reload on the real CLI: SIGHUP or POST /admin/v1/reload switches every worker to the
new registry with no failed request; an invalid registry is refused and the old one stays."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.core.routing.router import Router
from app.providers import build_providers
from app.runtime.build import read_registry
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream
from tests.harness import ROOT, GatewayProcess, model_entry, write_registry
from tests.steady_load import MODEL, Load

UPSTREAM_KEY = "reload-upstream-key"
ADMIN_TOKEN = "reload-admin-token-0001"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORKERS = 2


@pytest.fixture(scope="module")
def upstream_a() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def upstream_b() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(upstream_a: FakeUpstream, upstream_b: FakeUpstream) -> None:
    upstream_a.clear()
    upstream_b.clear()


def registry_to(path: Path, base_url: str) -> Path:
    providers = {"up": {"type": "openai", "base_url": base_url, "api_key": UPSTREAM_KEY}}
    return write_registry(path, providers, {MODEL: model_entry([{"provider": "up", "model": "m"}])})


def gateway_env(registry: Path, workers: int = WORKERS) -> dict[str, str]:
    return {
        "MODELS_CONFIG": str(registry),
        "WORKERS": str(workers),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_INTERNAL_TOKEN": "",
        "RATE_LIMIT_PER_SECOND": "0",
        "AUTH_FAILURES_PER_MINUTE": "0",
        "REDIS_URL": "",
        "KEYS_DB": str(registry.parent / "keys.db"),
        "LOG_LEVEL": "info",
    }


@contextmanager
def running(gateway: GatewayProcess, workers: int = WORKERS) -> Iterator[GatewayProcess]:
    with gateway:
        started = "Application startup complete"
        wait_for(lambda: gateway.output().count(started) >= workers, gateway)
        yield gateway


def wait_for(condition, gateway: GatewayProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        lines = [x for x in gateway.output().splitlines() if "app.access" not in x]
        assert time.monotonic() < deadline, "\n".join(lines[-30:])
        time.sleep(0.05)


def reload_lines(gateway: GatewayProcess, message: str = "registry reloaded") -> list[dict]:
    return [
        json.loads(line)
        for line in gateway.output().splitlines()
        if line.startswith("{") and message in line
    ]


def served_by_b_only(load: Load, upstream_a: FakeUpstream, upstream_b: FakeUpstream) -> None:
    """Once every worker has switched, no request sent from then on reaches A, while B goes on
    getting requests. A request sent before then may still reach A: it was in flight at the swap
    and finishes on the registry it started with."""
    switched = time.monotonic()
    b_before = len(upstream_b.requests)
    time.sleep(0.5)
    reached_a = [text for r in list(upstream_a.requests) for text in r.json["input"]]
    assert [t for t in reached_a if load.sent_at[t] >= switched] == []
    assert len(upstream_b.requests) > b_before


def test_sighup_switches_a_route_s_upstream_under_load_with_no_failed_request(
    tmp_path, upstream_a, upstream_b
):
    upstream_a.latency = upstream_b.latency = 0.02  # requests are in flight at the swap
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    with running(GatewayProcess(gateway_env(registry))) as gateway, Load(gateway.url) as load:
        wait_for(lambda: len(upstream_a.requests) >= 20, gateway)
        registry_to(registry, upstream_b.base_url)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len({x["pid"] for x in reload_lines(gateway)}) == WORKERS, gateway)
        served_by_b_only(load, upstream_a, upstream_b)
        assert gateway.process.poll() is None  # SIGHUP restarted nothing and ended nothing
    assert len(load.outcomes) >= 40
    assert [o.result for o in load.outcomes if o.result != "200"] == []
    assert "restarting processes" not in gateway.output()  # uvicorn's own SIGHUP handling


def test_sighup_reloads_a_single_process_gateway_instead_of_ending_it(
    tmp_path, upstream_a, upstream_b
):
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    with running(GatewayProcess(gateway_env(registry, workers=1)), workers=1) as gateway:
        registry_to(registry, upstream_b.base_url)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(reload_lines(gateway)) == 1, gateway)
        assert embed(gateway.url).status_code == 200
        assert gateway.process.poll() is None
    assert len(upstream_b.requests) == 1 and len(upstream_a.requests) == 0


def embed(url: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/embeddings",
        json={"model": MODEL, "input": "hello"},
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "connection": "close"},
        timeout=10,
    )


def test_admin_reload_reaches_every_worker_and_rereads_the_env_file(
    tmp_path, upstream_a, upstream_b
):
    """`${VAR}` values come from the .env file as it is at the reload; the worker that answers
    the call has the supervisor signal every worker."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"RELOAD_UPSTREAM={upstream_a.base_url}\n")
    registry = registry_to(tmp_path / "models.yaml", "${RELOAD_UPSTREAM}")
    # cwd is where the .env file is read from, as for a user who starts it there.
    gateway = GatewayProcess(gateway_env(registry), cwd=tmp_path)
    with running(gateway), Load(gateway.url) as load:
        wait_for(lambda: len(upstream_a.requests) >= 10, gateway)
        env_file.write_text(f"RELOAD_UPSTREAM={upstream_b.base_url}\n")
        answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "status": "reloaded",
            "models": 1,
            "routes_kept": 0,  # its provider's URL changed
            "routes_new": 1,
        }
        wait_for(lambda: len({x["pid"] for x in reload_lines(gateway)}) == WORKERS, gateway)
        served_by_b_only(load, upstream_a, upstream_b)
    assert [o.result for o in load.outcomes if o.result != "200"] == []


def test_an_invalid_registry_is_refused_with_the_start_up_line_and_the_old_one_serves(
    tmp_path, upstream_a
):
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    with running(GatewayProcess(gateway_env(registry))) as gateway:
        good = registry.read_text()
        registry.write_text(good.replace("type: openai", "type: no-such-type"))
        check = subprocess.run(
            [sys.executable, "-m", "app.cli", "check-config"],
            env={**gateway.env, "PORT": "1"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 2
        line = check.stderr.strip().removeprefix("embeddings-gateway: ")
        answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=10)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["message"] == line
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_registry"
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)  # refused on every worker, logged
        wait_for(lambda: len(reload_lines(gateway, "reload refused")) >= 1 + WORKERS, gateway)
        assert embed(gateway.url).status_code == 200  # the old registry still serves
        assert len(upstream_a.requests) == 1
        assert reload_lines(gateway) == []


def test_the_reload_route_needs_the_admin_token(tmp_path, upstream_a):
    registry = registry_to(tmp_path / "models.yaml", upstream_a.base_url)
    with running(GatewayProcess(gateway_env(registry, workers=1)), workers=1) as gateway:
        for headers in ({}, {"Authorization": f"Bearer {CLIENT_KEY}"}):
            answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=headers, timeout=10)
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "invalid_admin_token"
    env = {**gateway_env(registry, workers=1), "GATEWAY_ADMIN_TOKEN": ""}
    with running(GatewayProcess(env), workers=1) as gateway:
        answer = httpx.post(f"{gateway.url}/admin/v1/reload", headers=ADMIN, timeout=10)
        assert answer.status_code == 404


def test_route_health_carries_over_only_for_routes_that_did_not_change(tmp_path, upstream_a):
    def registry(path: Path, b_timeout: float):
        providers = {
            "p": {"type": "openai", "base_url": upstream_a.base_url, "api_key": UPSTREAM_KEY},
            "q": {
                "type": "openai",
                "base_url": upstream_a.base_url,
                "api_key": UPSTREAM_KEY,
                "timeout_seconds": b_timeout,
            },
        }
        models = {
            "same": model_entry([{"provider": "p", "model": "m"}]),
            "changed": model_entry([{"provider": "q", "model": "m"}]),
        }
        return read_registry(write_registry(path, providers, models), {})

    old = registry(tmp_path / "a.yaml", 5.0)
    router = Router(old, build_providers(old))
    for model in ("same", "changed"):
        route = old.models[model].routes[0]
        for _ in range(route.policy.cooldown_failures):
            router.state(route).health.failure()
        assert router.state(route).health.is_open
    new = registry(tmp_path / "b.yaml", 7.0)  # provider q changed, p did not
    successor = router.successor(new, build_providers(new))
    assert successor.state(new.models["same"].routes[0]).health.is_open
    assert not successor.state(new.models["changed"].routes[0]).health.is_open
    assert successor.routes_carried_over == 1
