"""Route strategies on real sockets: weighted shares, least-latency finding the faster route,
and cooldown still applying under a strategy."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from app.main import create_app
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, Fault
from tests.harness import ThreadedGateway, model_entry, write_registry

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


class SeededGateway(ThreadedGateway):
    """A ThreadedGateway whose balancer draws from a seeded random source."""

    def __init__(self, seed: int, **settings: object) -> None:
        super().__init__(**settings)
        self.server.config.app = create_app(self.settings, rng=random.Random(seed))


@pytest.fixture(scope="module")
def first() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(scope="module")
def second() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset(first, second) -> Iterator[None]:
    yield
    first.clear()
    second.clear()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, first, second) -> Iterator[ThreadedGateway]:
    policy = {"timeout_seconds": 2, "cooldown_failures": 1, "cooldown_seconds": 600}
    providers = {
        "first": {"type": "nanogpt", "base_url": first.base_url, "api_key": "k1", **policy},
        "second": {"type": "aiml", "base_url": second.base_url, "api_key": "k2", **policy},
    }

    def model(name: str, strategy: str, weights: tuple[float, float] = (1, 1)) -> dict:
        entry = model_entry(
            [
                {"provider": "first", "model": f"{name}-a", "weight": weights[0]},
                {"provider": "second", "model": f"{name}-b", "weight": weights[1]},
            ]
        )
        return {**entry, "strategy": strategy}

    models = {
        "weighted": model("weighted", "weighted", (3, 1)),
        "least-latency": model("least-latency", "least-latency"),
        "weighted-cooling": model("weighted-cooling", "weighted"),
    }
    path = write_registry(tmp_path_factory.mktemp("balancing") / "models.yaml", providers, models)
    with SeededGateway(
        11, MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY, RATE_LIMIT_PER_SECOND=0
    ) as server:
        yield server


def embed(client: httpx.Client, model: str, text: str) -> httpx.Response:
    response = client.post(
        "/v1/embeddings", headers=AUTH, json={"model": model, "input": text}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def served_by(fake: FakeUpstream, upstream_model: str) -> int:
    return sum(1 for r in fake.embedding_requests() if r.json["model"] == upstream_model)


def test_weighted_routes_share_requests_by_weight(gateway, first, second):
    with httpx.Client(base_url=gateway.url) as client:
        for i in range(400):
            embed(client, "weighted", f"weighted {i}")
    share = served_by(first, "weighted-a") / 400
    assert abs(share - 0.75) < 0.05
    assert served_by(first, "weighted-a") + served_by(second, "weighted-b") == 400


def test_least_latency_sends_nearly_everything_to_the_faster_route(gateway, first, second):
    first.latency = 0.15  # first in registry order, and slower
    with httpx.Client(base_url=gateway.url) as client:
        for i in range(10):
            embed(client, "least-latency", f"warm-up {i}")
        first.clear()
        second.clear()
        first.latency = 0.15
        for i in range(200):
            embed(client, "least-latency", f"measured {i}")
    to_faster = served_by(second, "least-latency-b")
    assert to_faster / 200 >= 0.9
    assert served_by(first, "least-latency-a") > 0  # explored now and then, to notice recovery


def test_a_route_in_cooldown_is_skipped_under_a_strategy(gateway, first, second):
    first.add_fault(Fault.http_status(500), times=None)
    with httpx.Client(base_url=gateway.url) as client:
        for i in range(40):
            embed(client, "weighted-cooling", f"cooling {i}")
    # The first failure opens the cooldown (cooldown_failures 1): never called again.
    assert served_by(first, "weighted-cooling-a") == 1
    assert served_by(second, "weighted-cooling-b") == 40
