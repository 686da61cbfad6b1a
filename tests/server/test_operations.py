"""Health, readiness, metrics (one process and several workers), logs, and check-config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    AIML_KEY,
    CLIENT_KEY,
    INTERNAL_TOKEN,
    NANOGPT_KEY,
    NUGEN_KEY,
    OTHER_CLIENT_KEY,
    providers_for,
    standard_models,
)
from tests.fakes import Fault
from tests.harness import ROOT, GatewayProcess, ThreadedGateway, free_port, write_registry

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
SECRETS = (CLIENT_KEY, OTHER_CLIENT_KEY, INTERNAL_TOKEN, NANOGPT_KEY, AIML_KEY, NUGEN_KEY)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_health_and_readiness_need_no_key(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert "x-ratelimit-limit-requests" not in ready.headers


def test_readiness_fails_with_the_reason_when_redis_is_down(registry_path):
    settings = {"MODELS_CONFIG": str(registry_path), "GATEWAY_API_KEYS": CLIENT_KEY}
    with ThreadedGateway(**settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0") as down:
        response = httpx.get(f"{down.url}/readyz")
        assert response.status_code == 503
        assert "Redis is unreachable" in response.json()["error"]["message"]
        assert httpx.get(f"{down.url}/healthz").status_code == 200


def test_readiness_with_a_live_redis(registry_path, redis_server):
    with ThreadedGateway(
        MODELS_CONFIG=str(registry_path), GATEWAY_API_KEYS=CLIENT_KEY, REDIS_URL=redis_server.url
    ) as live:
        assert httpx.get(f"{live.url}/readyz").status_code == 200


def test_metrics_count_requests_upstream_calls_and_tokens(gateway, nanogpt, aiml):
    before = scrape(gateway.url)
    httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers=AUTH,
        json={"model": "text-embedding-3-small", "input": ["one two", "three"]},
    )
    nanogpt.add_fault(Fault.http_status(500), times=2)
    httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers=AUTH,
        json={"model": "text-embedding-3-small", "input": "x"},
    )
    for bogus in ("evil-model-1", "evil-model-2"):
        httpx.post(
            f"{gateway.url}/v1/embeddings", headers=AUTH, json={"model": bogus, "input": "x"}
        )
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    prefix = "embeddings_gateway_"
    ok = {"route": "embeddings", "model": "text-embedding-3-small", "status": "200"}
    assert delta(prefix + "requests_total", **ok) == 2
    assert delta(prefix + "requests_total", route="embeddings", model="unknown") == 2
    assert "evil-model" not in after
    assert delta(prefix + "upstream_calls_total", provider="nanogpt", outcome="ok") == 1
    assert delta(prefix + "upstream_calls_total", provider="nanogpt", outcome="server") == 2
    assert delta(prefix + "upstream_calls_total", provider="aiml", outcome="ok") == 1
    assert delta(prefix + "tokens_total", model="text-embedding-3-small", provider="nanogpt") == 3
    assert delta(prefix + "request_duration_seconds_count", route="embeddings") == 4
    assert sample(after, prefix + "in_flight_requests") == 0
    assert prefix + "route_cooldown_open" in after
    assert delta(prefix + "requests_total", route="models") == 0  # /metrics is not API traffic


def test_metrics_can_be_turned_off(registry_path):
    with ThreadedGateway(MODELS_CONFIG=str(registry_path), METRICS_ENABLED=False) as quiet:
        assert httpx.get(f"{quiet.url}/metrics").status_code == 404


def test_rate_limited_requests_are_counted(registry_path):
    with ThreadedGateway(MODELS_CONFIG=str(registry_path), RATE_LIMIT_PER_SECOND=2) as limited:
        before = sample(scrape(limited.url), "embeddings_gateway_rate_limited_total")
        statuses = [httpx.get(f"{limited.url}/v1/models").status_code for _ in range(5)]
        after = sample(scrape(limited.url), "embeddings_gateway_rate_limited_total")
    assert statuses.count(429) >= 2
    assert after - before == statuses.count(429)


@pytest.fixture(scope="module")
def logged_gateway(tmp_path_factory, nanogpt, aiml, nugen) -> Iterator[GatewayProcess]:
    path = tmp_path_factory.mktemp("ops") / "models.yaml"
    write_registry(path, providers_for(nanogpt, aiml, nugen, max_attempts=1), standard_models())
    env = {
        "MODELS_CONFIG": str(path),
        "GATEWAY_API_KEYS": f"{CLIENT_KEY},{OTHER_CLIENT_KEY}",
        "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "WORKERS": "2",
        "LOG_LEVEL": "info",
        "RATE_LIMIT_PER_SECOND": "1000",
    }
    with GatewayProcess(env) as process:
        yield process


def test_metrics_add_up_across_workers(logged_gateway):
    url = logged_gateway.url
    before = sample(scrape(url), "embeddings_gateway_requests_total", route="embedding_models")

    def fetch(_: int) -> int:
        # A new connection each time, several at once, so both workers accept some.
        headers = {"connection": "close"}
        return httpx.get(f"{url}/v1/embedding-models", headers=headers).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(fetch, range(80))) == {200}
    time.sleep(0.2)
    after = sample(scrape(url), "embeddings_gateway_requests_total", route="embedding_models")
    assert after - before == 80
    lines = [json.loads(x) for x in logged_gateway.output().splitlines() if x.startswith("{")]
    pids = {x["pid"] for x in lines if x.get("path") == "/v1/embedding-models"}
    assert len(pids) == 2  # both workers served, and the scrape summed them


def test_every_error_path_logs_json_and_leaks_no_key(logged_gateway, nanogpt, aiml, nugen):
    url = logged_gateway.url
    bodies = []

    def call(method: str, path: str, **kwargs) -> None:
        response = httpx.request(method, url + path, timeout=30, **kwargs)
        bodies.append(response.text)

    key = {"authorization": f"Bearer {CLIENT_KEY}"}
    call("POST", "/v1/embeddings", headers=key, json={"model": "aiml-only", "input": "ok"})
    call("POST", "/v1/embeddings", json={"model": "aiml-only", "input": "x"})
    call("POST", "/v1/embeddings", headers={"x-api-key": NANOGPT_KEY}, json={"input": "x"})
    call("POST", "/v1/embeddings", headers={"authorization": f"Bearer {AIML_KEY}x"})
    call("POST", "/v1/embeddings", headers=key, content=b"{bad json")
    call("POST", "/v1/embeddings", headers=key, json={"model": "nope", "input": "x"})
    call("POST", "/v1/embeddings", headers=key, json={"model": "aiml-only", "input": ""})
    call(
        "POST",
        "/v1/embeddings",
        headers={**key, "x-request-id": "find-me-42"},
        json={"model": "aiml-only", "input": "ok"},
    )
    nanogpt.add_fault(Fault.http_status(500), times=None)
    aiml.add_fault(Fault.http_status(401), times=None)
    call(
        "POST",
        "/v1/embeddings",
        headers=key,
        json={"model": "text-embedding-3-small", "input": "x"},
    )
    nugen.add_fault(Fault.http_status(400), times=None)
    call(
        "POST",
        "/v1/embeddings",
        headers={"x-api-key": INTERNAL_TOKEN},
        json={"model": "nugen-flash-embed", "input": "x"},
    )
    call("GET", "/v1/nothing", headers=key)
    call("GET", "/v1/embedding-models", headers={"x-api-key": "wrong"})
    time.sleep(0.3)
    logs = logged_gateway.output()
    for secret in SECRETS:
        assert secret not in logs
        assert all(secret not in body for body in bodies)

    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "app.access"]
    assert len(access) >= 12
    mine = next(line for line in access if line["request_id"] == "find-me-42")
    assert mine["status"] == 200
    assert mine["client_ip"] == "127.0.0.1"
    assert re.fullmatch(r"key_[0-9a-f]{12}", mine["key_id"])
    assert mine["model"] == "aiml-only" and mine["providers"] == ["aiml"]
    assert mine["prompt_tokens"] == 1 and mine["duration_ms"] >= mine["upstream_ms"] > 0
    failed = next(line for line in access if line.get("model") == "text-embedding-3-small")
    assert failed["status"] == 502 and failed["providers"] == ["nanogpt", "aiml"]
    config = next(line for line in lines if line.get("message") == "configuration")
    assert config["settings"]["GATEWAY_API_KEYS"] == "2 key(s), masked"


def check_config(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "check-config"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_prints_the_model_table_with_keys_masked(registry_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "MODELS_CONFIG": str(registry_path),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "NANOGPT_API_KEY": "env-nano-secret",
    }
    result = check_config(env, ROOT)
    assert result.returncode == 0, result.stderr
    assert "text-embedding-3-small" in result.stdout
    assert "nanogpt:text-embedding-3-small [key set]" in result.stdout
    for secret in (CLIENT_KEY, NANOGPT_KEY, "env-nano-secret"):
        assert secret not in result.stdout + result.stderr

    env["RATE_LIMIT_PER_SECOND"] = "-1"
    bad = check_config(env, ROOT)
    assert bad.returncode != 0
    assert "RATE_LIMIT_PER_SECOND" in bad.stderr and "Traceback" not in bad.stderr


def test_settings_are_read_from_a_dot_env_file(tmp_path, registry_path):
    (tmp_path / ".env").write_text(
        f"MODELS_CONFIG={registry_path}\nNANOGPT_API_KEY=from-dot-env\nRATE_LIMIT_PER_SECOND=7\n"
    )
    result = check_config({"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"RATE_LIMIT_PER_SECOND": 7' in result.stdout
    assert '"NANOGPT_API_KEY": "**********"' in result.stdout
    assert "from-dot-env" not in result.stdout
