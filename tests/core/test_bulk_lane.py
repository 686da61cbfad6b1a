"""The bulk lane on real sockets: a key with `priority: bulk` gets exact vectors, and its calls
hold at most all of a route's call slots but one, so one stays free for interactive traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import FakeUpstream, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.keys_support import ADMIN_TOKEN, create_key

UPSTREAM_KEY = "bulk-lane-upstream-secret-01"
DIMS = 16


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream: FakeUpstream) -> Iterator[ThreadedGateway]:
    tmp = tmp_path_factory.mktemp("bulk-lane")
    provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
    models = {
        "m": model_entry(
            [{"provider": "up", "model": "up-m", "max_inflight_calls": 2}], dimensions=DIMS
        )
    }
    path = write_registry(tmp / "models.yaml", {"up": provider}, models)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        KEYS_DB=str(tmp / "keys.db"),
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=0,
    ) as server:
        yield server


def burst(url: str, key: str, texts: list[str]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{url}/v1/embeddings",
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "m", "input": text, "encoding_format": "float"},
                    )
                    for text in texts
                )
            )

    return asyncio.run(run())


@pytest.mark.parametrize(("priority", "most_in_flight"), [("bulk", 1), ("interactive", 2)])
def test_a_bulk_key_holds_all_call_slots_but_one(
    gateway: ThreadedGateway, upstream: FakeUpstream, priority: str, most_in_flight: int
):
    key = create_key(gateway.url, name=f"lane-{priority}", priority=priority)["key"]
    assert create_key(gateway.url, name="check", priority="bulk")["priority"] == "bulk"
    upstream.clear()
    upstream.latency = 0.2  # slow enough that the burst finds every slot busy
    texts = [f"{priority} text {i}" for i in range(8)]
    answers = burst(gateway.url, key, texts)
    assert [a.status_code for a in answers] == [200] * len(texts)
    for text, answer in zip(texts, answers, strict=True):
        vector = answer.json()["data"][0]["embedding"]
        assert vector == pytest.approx(fake_vector("up-m", text, DIMS).tolist(), abs=1e-6)
    assert upstream.max_in_flight == most_in_flight
