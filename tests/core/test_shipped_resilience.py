"""The shipped registry (config/models.yaml) with its shipped defaults, pointed at fakes: a hung
first route fails over within the target, and two hung routes end in a 504 in time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.runtime.build import read_registry
from tests.conftest import AIML_KEY, CLIENT_KEY, NANOGPT_KEY
from tests.fakes import FakeUpstream, Fault
from tests.harness import ROOT, ThreadedGateway

SHIPPED = ROOT / "config" / "models.yaml"
MODEL = "text-embedding-3-small"
FAILOVER_TARGET_SECONDS = 12.0
DIMS = {MODEL: 1536}


@pytest.fixture(scope="module")
def nano() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=NANOGPT_KEY, dims=DIMS) as fake:
        yield fake


@pytest.fixture(scope="module")
def aiml_fake() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=AIML_KEY, dims=DIMS) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset(nano, aiml_fake) -> Iterator[None]:
    yield
    nano.clear()
    aiml_fake.clear()


@pytest.fixture(scope="module")
def gateway(nano, aiml_fake) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(
        MODELS_CONFIG=str(SHIPPED),
        GATEWAY_API_KEYS=CLIENT_KEY,
        NANOGPT_BASE_URL=nano.base_url,
        NANOGPT_API_KEY=NANOGPT_KEY,
        AIML_BASE_URL=aiml_fake.base_url,
        AIML_API_KEY=AIML_KEY,
    ) as server:
        yield server


def embed(gateway: ThreadedGateway, texts: list[str]) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": MODEL, "input": texts, "encoding_format": "float"},
        timeout=120,
    )


def test_the_shipped_registry_hedges_nothing_by_default():
    registry = read_registry(
        SHIPPED, {"NANOGPT_BASE_URL": "x", "AIML_BASE_URL": "x"} | {"NUGEN_BASE_URL": "x"}
    )
    for model in registry.models.values():
        assert model.config.strategy == "failover"
        for route in model.routes:
            assert route.policy.hedge_after_ms == 0


def test_a_hung_first_route_fails_over_within_the_target(gateway, nano, aiml_fake):
    nano.add_fault(Fault.hang(60), times=None)
    texts = ["the first route never answers"]
    started = time.monotonic()
    response = embed(gateway, texts)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    got = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
    np.testing.assert_array_equal(got, aiml_fake.expected_vector(MODEL, texts[0]))
    assert elapsed <= FAILOVER_TARGET_SECONDS  # before: a 504 after the whole 60 s deadline
    assert len(nano.embedding_requests()) == 1  # the hang was not retried


def test_both_routes_hung_is_a_clean_504_inside_the_deadline(gateway, nano, aiml_fake):
    nano.add_fault(Fault.hang(90), times=None)
    aiml_fake.add_fault(Fault.hang(90), times=None)
    started = time.monotonic()
    response = embed(gateway, ["nobody answers"])
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["type"] == "timeout_error"
    assert "NanoGPT" in error["message"] and "AI/ML API" in error["message"]
    assert elapsed < gateway.settings.REQUEST_TIMEOUT_SECONDS
