"""Broken or hostile upstreams cannot make the gateway hold unbounded memory, falsify usage, or
leak its key: a real gateway (thread, or the CLI in a subprocess for memory) against
tests/hostile_upstream.py on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config.registry import RegistryError
from app.core.tokens import count_tokens
from app.runtime.build import read_registry
from tests.harness import GatewayProcess, ThreadedGateway, model_entry, write_registry
from tests.hostile_upstream import DIMS, HostileUpstream

HOSTILE_KEY = "hostile-upstream-Secret-444"
ROUTES = {
    "m-normal": ["normal"],
    "m-huge": ["huge"],
    "m-bomb": ["gzip-bomb"],
    "m-huge-error": ["huge-error"],
    "m-usage-huge": [f"usage-{2**62}"],
    "m-usage-over-max": ["usage-9000"],
    "m-usage-fair": ["usage-3"],
    "m-echo": ["echo-key"],
    "m-failover": ["huge", "normal"],
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def hostile_registry(tmp_path_factory, hostile: HostileUpstream) -> Path:
    provider = {
        "type": "nanogpt",
        "base_url": hostile.base_url,
        "api_key": HOSTILE_KEY,
        "max_attempts": 1,
        "cooldown_failures": 1000,
    }
    # Inflating a bomb to the cap takes seconds of CPU on a busy machine: these routes get the
    # time, so the tests prove the cap, not the call timeout.
    slow = {"gzip-bomb": {"timeout_seconds": 30}, "huge": {"timeout_seconds": 30}}
    models = {
        name: model_entry(
            [{"provider": "hostile", "model": up, **slow.get(up, {})} for up in routes],
            dimensions=DIMS,
            max_tokens=2000,
        )
        for name, routes in ROUTES.items()
    }
    models["m-capped"] = model_entry(
        [{"provider": "capped", "model": "normal"}], dimensions=DIMS, max_tokens=2000
    )
    providers = {"hostile": provider, "capped": {**provider, "max_response_bytes": 2048}}
    path = tmp_path_factory.mktemp("hostile") / "models.yaml"
    return write_registry(path, providers, models)


@pytest.fixture(scope="module")
def gateway(hostile_registry: Path) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(
        MODELS_CONFIG=str(hostile_registry), RATE_LIMIT_PER_SECOND=0, REQUEST_TIMEOUT_SECONDS=60
    ) as server:
        yield server


def embed(gateway, model: str, inputs: object = "hello") -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/embeddings", json={"model": model, "input": inputs}, timeout=90
    )


# --- response size ------------------------------------------------------------------------------


def test_a_body_past_what_the_call_can_need_is_a_malformed_502(gateway):
    response = embed(gateway, "m-huge")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "larger than" in error["message"]


def test_a_gzip_bomb_is_cut_at_the_cap_after_inflating(gateway):
    response = embed(gateway, "m-bomb")
    assert response.status_code == 502
    assert "larger than" in response.json()["error"]["message"]


def test_an_oversized_answer_fails_over_to_the_next_route(gateway, hostile):
    hostile.calls.clear()
    response = embed(gateway, "m-failover", ["a", "b"])
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2
    assert hostile.calls == ["huge", "normal"]


def test_a_huge_error_body_is_read_only_in_part(gateway):
    response = embed(gateway, "m-huge-error")
    assert response.status_code == 502
    assert len(response.content) < 2000


def test_a_providers_max_response_bytes_overrides_the_computed_cap(gateway):
    assert embed(gateway, "m-capped", ["a"]).status_code == 200  # ~150 bytes
    response = embed(gateway, "m-capped", [f"text {i}" for i in range(40)])  # ~6 kB > 2048
    assert response.status_code == 502
    assert "2048 bytes" in response.json()["error"]["message"]


def test_max_response_bytes_is_refused_for_a_local_provider(tmp_path):
    path = write_registry(
        tmp_path / "models.yaml",
        {"local": {"type": "local", "max_response_bytes": 4096}},
        {},
    )
    with pytest.raises(RegistryError, match="max_response_bytes"):
        read_registry(str(path), {})


def _memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.mark.parametrize("model", ["m-huge", "m-bomb"])
def test_the_gateway_process_never_holds_a_huge_or_inflated_body(hostile_registry, model):
    """Peak RSS of the real CLI process around a 500 MB body, or 0.5 MB that inflates to 500 MB:
    before the cap it peaked at 2-3 GB; now the body is dropped at the cap (about 64 kB)."""
    env = {
        "MODELS_CONFIG": str(hostile_registry),
        "GATEWAY_API_KEYS": "",
        "RATE_LIMIT_PER_SECOND": "0",
        "LOG_LEVEL": "warning",
        "REDIS_URL": "",
    }
    with GatewayProcess(env) as process:
        assert process.process is not None
        pid = process.process.pid
        for _ in range(3):
            assert embed(process, "m-normal", ["warm", "up"]).status_code == 200
        before = _memory_kb(pid)
        response = embed(process, model)
        assert response.status_code == 502
        time.sleep(0.2)
        after = _memory_kb(pid)
    peak_growth_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    rss_growth_mb = (after["VmRSS"] - before["VmRSS"]) / 1024
    assert peak_growth_mb < 64, f"peak RSS grew {peak_growth_mb:.0f} MB"
    assert rss_growth_mb < 32, f"RSS grew {rss_growth_mb:.0f} MB and stayed"


# --- usage --------------------------------------------------------------------------------------


def test_an_absurd_upstream_count_is_replaced_by_the_gateways_own(gateway, caplog):
    caplog.set_level(logging.WARNING, logger="app.usage_check")
    response = embed(gateway, "m-usage-huge", "hello")
    assert response.status_code == 200
    assert response.json()["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    warnings = [r for r in caplog.records if r.name == "app.usage_check"]
    assert warnings and warnings[0].provider == "hostile"
    usage = httpx.get(f"{gateway.url}/v1/usage").json()
    rows = [row for row in usage["data"] if row["model"] == "m-usage-huge"]
    assert rows[0]["input_tokens"] == 1
    assert rows[0]["upstream_tokens"] == 1
    assert rows[0]["cost_usd"] < 1e-6


def test_an_upstream_count_past_max_tokens_times_inputs_is_not_believed(gateway):
    # 9000 tokens claimed for two inputs of a model whose max_tokens is 2000: within 4x of the
    # gateway's own count (~3800), but more than two inputs can hold.
    texts = ["word " * 1900, "term " * 1900]  # distinct: identical inputs go upstream once
    own = sum(count_tokens(texts))
    assert 4 * own > 9000
    response = embed(gateway, "m-usage-over-max", texts)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == own


def test_a_plausible_upstream_count_is_kept(gateway):
    response = embed(gateway, "m-usage-fair", ["hello world", "again"])
    assert response.json()["usage"]["prompt_tokens"] == 3


# --- what an upstream echoes --------------------------------------------------------------------


def test_an_upstream_echoing_the_key_in_any_form_leaks_none_of_it(gateway):
    response = embed(gateway, "m-echo")
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    squeezed = "".join(message.split()).lower()
    assert HOSTILE_KEY.lower() not in squeezed
    assert base64.b64encode(HOSTILE_KEY.encode()).decode().lower() not in message.lower()
    assert len(message) < 600
