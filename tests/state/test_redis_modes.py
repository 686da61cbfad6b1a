"""Every Redis mode (standalone, Cluster, Sentinel) on real servers: rate-limit accuracy across
workers, the cache's hits and misses in mixed order, usage and spend written exactly once and
read back by another gateway, and background writes flushed on a clean stop. The managed-key
store runs its whole suite per mode in test_keys_admin.py; failover is in
test_redis_failover.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.config.settings import Settings
from app.state.redis_client import connect, slot_of
from app.state.usage_ledger import UsageLedger, today
from app.state.usage_redis import RedisUsageBooks
from tests.cache_support import check_mixed_orders
from tests.conftest import (
    CLIENT_KEY,
    INTERNAL_TOKEN,
    OTHER_CLIENT_KEY,
    providers_for,
    redis_settings,
    standard_models,
)
from tests.fakes import fake_token_count, fake_vector
from tests.harness import GatewayProcess, ThreadedGateway, write_registry
from tests.limit_load import offer

MODES = ["standalone", "cluster", "sentinel"]
MODEL = "text-embedding-3-small"
PRICE = 0.02  # the standard registry's price per million tokens for MODEL


@pytest.fixture(scope="module")
def registry(tmp_path_factory, nanogpt, aiml, nugen):
    path = tmp_path_factory.mktemp("modes") / "models.yaml"
    return write_registry(path, providers_for(nanogpt, aiml, nugen), standard_models())


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def redis_env(request, mode) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        **redis_settings(request, mode),
        "RATE_LIMIT_KEY_PREFIX": f"rl:{tag}:",
        "CACHE_KEY_PREFIX": f"emb:{tag}:",
        "USAGE_KEY_PREFIX": f"usage:{tag}:",
    }


def gateway(registry, redis_env, **more) -> ThreadedGateway:
    return ThreadedGateway(
        MODELS_CONFIG=str(registry),
        GATEWAY_API_KEYS=f"{CLIENT_KEY},{OTHER_CLIENT_KEY}",
        GATEWAY_INTERNAL_TOKEN=INTERNAL_TOKEN,
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=0,
        **redis_env,
        **more,
    )


@pytest.fixture
def served(registry, redis_env) -> Iterator[ThreadedGateway]:
    with gateway(registry, redis_env) as server:
        yield server


def embed(server, texts, *, key=CLIENT_KEY) -> httpx.Response:
    response = httpx.post(
        f"{server.url}/v1/embeddings",
        headers={"authorization": f"Bearer {key}"},
        json={"model": MODEL, "input": texts, "encoding_format": "float"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def vectors(response: httpx.Response) -> np.ndarray:
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def expected(texts) -> np.ndarray:
    return np.array([fake_vector(MODEL, t, 16) for t in texts])


def sent_upstream(fake) -> list[str]:
    return [item for r in fake.embedding_requests() for item in r.json["input"]]


def test_mixed_hits_and_misses_in_any_order(served, nanogpt, mode):
    # Thirty items spread over every slot of a Cluster, so reads and writes cross nodes.
    corpus = [f"{mode} item {i} " + uuid.uuid4().hex[:6] for i in range(30)]
    check_mixed_orders(served.url, nanogpt, corpus, MODEL, rounds=4, take=12)


def test_a_clean_stop_leaves_cache_and_usage_in_redis(registry, redis_env, nanogpt, mode):
    """Background cache writes and the usage batches are flushed at shutdown: a new gateway,
    with nothing in process, reads every vector and every figure back from Redis."""
    texts = [f"{mode} burst {i} {uuid.uuid4().hex[:6]}" for i in range(40)]
    with gateway(registry, redis_env) as first:
        for start in range(0, 40, 5):  # several requests, each a miss
            embed(first, texts[start : start + 5], key=CLIENT_KEY)
        embed(first, texts[:10], key=OTHER_CLIENT_KEY)  # hits: queued or written vectors
    tokens = sum(fake_token_count(t) for t in texts)
    nanogpt.clear()
    with gateway(registry, redis_env) as second:
        again = embed(second, texts)
        assert again.headers["x-cache"] == "hit"
        assert nanogpt.embedding_requests() == []
        np.testing.assert_array_equal(vectors(again), expected(texts))
        figures = usage(second, CLIENT_KEY)
        other = usage(second, OTHER_CLIENT_KEY)
    assert figures["requests"] == 8 + 1
    assert figures["upstream_tokens"] == tokens
    assert figures["cost_usd"] == pytest.approx(tokens * PRICE / 1_000_000)
    assert other["requests"] == 1 and other["upstream_tokens"] == 0
    assert other["cached_tokens"] == other["input_tokens"] > 0


def usage(server, key) -> dict[str, float]:
    response = httpx.get(f"{server.url}/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()["total"]


async def test_usage_flushes_apply_once_per_slot(redis_env, mode):
    """Many keys' figures in one flush (one batch per slot in a Cluster), each applied once,
    even when every part is sent a second time as after a lost answer."""
    settings = Settings(_env_file=None, **redis_env)  # type: ignore[call-arg]
    assert settings.REDIS_URL is not None
    client = connect(settings.REDIS_URL, 1.0, settings.redis_options)
    books = RedisUsageBooks(client, prefix=settings.USAGE_KEY_PREFIX, timeout=1.0)
    ledger = UsageLedger(books, report_timeout=1.0)
    keys = [f"key_{n:04d}" for n in range(20)]
    try:
        for key in keys:
            for _ in range(3):
                ledger.record(
                    key, MODEL, input_tokens=5, upstream_tokens=5, cached_tokens=0,
                    price_per_million=0,
                )  # fmt: skip
        apply, parts = ledger._apply, []

        async def applied_twice(batch_id, batch):  # as if the first answer had been lost
            parts.append(batch_id)
            await apply(batch_id, batch)
            await apply(batch_id, batch)

        ledger._apply = applied_twice  # type: ignore[method-assign]
        await ledger.flush()
        assert ledger._unsent == []
        prefix = f"{settings.USAGE_KEY_PREFIX}{today().isoformat()}:"
        slots = {slot_of(prefix + key) for key in keys}
        assert len(parts) == (len(slots) if mode == "cluster" else 1)
        assert mode != "cluster" or len(parts) > 1
        await books.maintain()  # what a gateway's writer does first: the index is complete
        rows = await ledger.report(None, today(), today())
    finally:
        await client.aclose()
    by_key = {row.key_id: (row.requests, row.upstream_tokens) for row in rows}
    assert {k: by_key.get(k) for k in keys} == {k: (3, 15) for k in keys}


# --- rate-limit accuracy across worker processes ------------------------------------------------


async def test_two_workers_share_one_exact_limit(registry, redis_env, mode):
    limit, offered, seconds = 50, 3, 3.0
    rate = limit * offered
    env = {
        "MODELS_CONFIG": str(registry),
        "WORKERS": "2",
        "RATE_LIMIT_PER_SECOND": str(limit),
        "GATEWAY_API_KEYS": "",
        "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "TRUSTED_PROXIES": "",
        "LOG_LEVEL": "info",
        **redis_env,
    }
    with GatewayProcess(env) as server:
        deadline = time.monotonic() + 30
        while server.output().count("rate limits are counted in Redis") < 2:
            assert time.monotonic() < deadline, server.output()
            await asyncio.sleep(0.05)
        load = await offer(server.url, rate, seconds, INTERNAL_TOKEN)
    statuses = load.statuses
    admitted, limited = statuses.count(200), statuses.count(429)
    expected_admitted = limit * seconds
    print(
        f"\n{mode}: 2 workers, limit {limit}/s, {len(statuses)} offered over {load.seconds:.2f} s: "
        f"{admitted} admitted ({100 * (admitted / expected_admitted - 1):+.1f} %)"
    )
    assert admitted + limited == len(statuses)
    assert len(statuses) >= 2 * limit * seconds  # well over the limit the whole time
    assert load.seconds < seconds + 0.1
    excess = admitted - expected_admitted
    assert -0.05 * expected_admitted <= excess <= 0.05 * expected_admitted + load.stretch(limit)
