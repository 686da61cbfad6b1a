"""Budgets hold both ways, whatever the upstream's tokenizer: a key overshoots by at most one
request's real cost, and is told `insufficient_quota` only once its budget is really spent.
Against an upstream billing 12 tokens for a one-token input, on two workers, on both stores;
then reservations that expire, a reserve that timed out, and spend through a Redis outage."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config.registry import Registry
from app.config.settings import Settings
from app.core.embedding_request import parse_embedding_request
from app.core.job import EmbeddingJob
from app.core.tokens import count_tokens
from app.errors import KeyStoreUnavailable
from app.keys.build import build_key_policies, build_keys
from app.keys.model import KeyPolicy
from app.keys.redis_store import hold_key
from app.keys.sqlite_store import SQLiteKeyStore
from app.keys.store import KeyStore
from app.runtime.build import read_registry
from app.state.batched_writes import StoreFailed
from app.state.redis_client import connect
from tests.harness import GatewayProcess, model_entry, write_registry
from tests.hostile_upstream import DIMS, HostileUpstream
from tests.keys.test_keys_workers import gateway_env, started, store_env
from tests.keys_support import admin, create_key
from tests.redis_server import RedisServer

MODEL = "twelve"
PRICE = 500.0  # $ per million tokens: 12 tokens cost $0.006
REAL_COST = 12 * PRICE / 1e6
BUDGET = 0.05
# One cl100k token each, so the upstream's 12 is exactly the most the gateway believes.
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "house",
    "light",
    "water",
    "music",
    "paper",
    "chair",
    "table",
    "glass",
    "horse",
    "bread",
    "money",
    "plant",
    "night",
    "dream",
    "phone",
    "train",
    "story",
    "field",
    "metal",
    "doctor",
    "winter",
    "summer",
    "school",
    "window",
    "mother",
    "father",
    "world",
]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def twelve_registry(tmp_path_factory, hostile: HostileUpstream) -> Path:
    provider = {"type": "nanogpt", "base_url": hostile.base_url, "api_key": "hostile-key"}
    models = {MODEL: model_entry([{"provider": "hostile", "model": "per-input-12"}], price=PRICE)}
    models[MODEL]["dimensions"] = DIMS
    path = tmp_path_factory.mktemp("twelve") / "models.yaml"
    return write_registry(path, {"hostile": provider}, models)


async def _spend_concurrently(url: str, key: str, *, retry: bool) -> list[httpx.Response]:
    """32 one-word requests at once, each on a fresh connection; with `retry`, a retryable
    429 is retried after its Retry-After (bounded), as an SDK would."""
    headers = {"authorization": f"Bearer {key}", "connection": "close"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=20) as client:

        async def one(word: str) -> httpx.Response:
            body = {"model": MODEL, "input": word, "encoding_format": "float"}
            for _ in range(200):
                response = await client.post("/v1/embeddings", json=body)
                if not retry or response.json().get("error", {}).get("code") != "budget_in_flight":
                    return response
                await asyncio.sleep(0.02)
            return response

        async with asyncio.timeout(60):
            return await asyncio.gather(*(one(word) for word in WORDS))


async def test_a_budget_holds_both_ways_against_an_upstream_billing_12x(
    twelve_registry, store, request, tmp_path
):
    assert count_tokens(WORDS) == [1] * len(WORDS) and len(WORDS) == 32
    env = gateway_env(twelve_registry, store)
    with started(GatewayProcess(env)) as gateway:
        # Without retries: whatever is refused, the spend stays within one request's cost.
        once = create_key(gateway.url, budget_usd=BUDGET)
        answers = await _spend_concurrently(gateway.url, once["key"], retry=False)
        spent_once = admin(gateway.url, "GET", f"/keys/{once['id']}").json()["spend_usd"]["total"]
        # With retries of the retryable refusals: the whole budget is used, then refused.
        retried = create_key(gateway.url, budget_usd=BUDGET)
        finals = await _spend_concurrently(gateway.url, retried["key"], retry=True)
        shown = admin(gateway.url, "GET", f"/keys/{retried['id']}").json()
    spent = shown["spend_usd"]["total"]
    codes = [a.json()["error"]["code"] for a in answers if a.status_code != 200]
    print(
        f"\n{store['_store']}: budget ${BUDGET}, a request really costs ${REAL_COST}: "
        f"32 at once spent ${spent_once:.4f} ({sum(a.status_code == 200 for a in answers)} "
        f"admitted; refusals {sorted(set(codes))}); with retries ${spent:.4f} "
        f"({sum(a.status_code == 200 for a in finals)} admitted)"
    )
    assert spent_once <= BUDGET + REAL_COST + 1e-9
    assert {a.status_code for a in answers} <= {200, 429}
    for answer in answers:
        if answer.status_code == 429 and answer.json()["error"]["code"] == "budget_in_flight":
            assert answer.headers.get("x-should-retry") != "false"
            assert int(answer.headers["retry-after"]) >= 1
    if "insufficient_quota" in codes:  # told the budget is spent only once it is
        assert spent_once >= BUDGET
    assert {a.status_code for a in finals} == {200, 429}
    assert {a.json()["error"]["code"] for a in finals if a.status_code == 429} == {
        "insufficient_quota"
    }
    assert BUDGET <= spent <= BUDGET + REAL_COST + 1e-9
    assert shown["budget_remaining_usd"] == 0
    assert sum(a.status_code == 200 for a in finals) == round(spent / REAL_COST)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> dict[str, str]:
    env = store_env(request.param, request, tmp_path)
    env["_store"] = request.param
    return env


# --- reservations, below HTTP, on real stores ---------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def key_store(request, tmp_path) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        yield SQLiteKeyStore(tmp_path / "keys.db")
        return
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        REDIS_URL=request.getfixturevalue("redis_server").url,
        KEYS_KEY_PREFIX=f"keys:{uuid.uuid4().hex[:8]}:",
    )
    keys = build_keys(settings, connect(settings.REDIS_URL or "", 1.0), Registry("t", {}, {}))
    assert keys is not None
    yield keys.store


async def test_a_reservation_whose_request_died_frees_itself(key_store):
    try:
        first = await key_store.reserve("key_dead", "a", 0.6, "total", 1.0, hold_seconds=0.3)
        assert first.outcome == "admitted"
        # Its process died: nothing settles it. Meanwhile the budget is held...
        held = await key_store.reserve("key_dead", "b", 0.6, "total", 1.0, hold_seconds=0.3)
        assert (held.outcome, held.held_usd) == ("in_flight", 0.6)
        await asyncio.sleep(0.4)
        # ... and once its deadline passes, it is free again: nothing leaked, nothing charged.
        freed = await key_store.reserve("key_dead", "c", 0.6, "total", 1.0, hold_seconds=0.3)
        assert (freed.outcome, freed.spent_usd, freed.held_usd) == ("admitted", 0.0, 0.0)
    finally:
        await key_store.aclose()


async def test_a_reserve_that_timed_out_is_released_not_charged(registry_path):
    """Redis stopped (SIGSTOP) mid-check: the request gets a 503, and when Redis resumes and
    runs the queued script after all, the reservation is released, never charged."""
    with RedisServer() as server:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, REDIS_URL=server.url, CACHE_TIMEOUT_MS=150, REDIS_TIMEOUT_MS=150
        )
        redis = connect(server.url, 1.0)
        keys = build_keys(settings, redis, Registry("t", {}, {}))
        assert keys is not None
        policies = build_key_policies(settings, redis, keys)
        record, _ = await keys.create(KeyPolicy(budget_usd=1.0), "t")
        job = await _job(registry_path)
        admitted = await policies.admit(record, job)  # loads the script
        await policies.settle(admitted.charge, 0, 0.0)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(KeyStoreUnavailable):
                await policies.admit(record, job)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while await redis.zcard(hold_key(settings.KEYS_KEY_PREFIX, record.id)):
            assert time.monotonic() < deadline, "the timed-out reservation was never released"
            await policies.spend.flush()
        assert (await keys.spend(record.id))["total"] == 0
        await policies.aclose()
        await redis.aclose()


async def test_spend_of_every_key_survives_a_redis_outage_once(registry_path):
    with RedisServer() as server:
        settings = Settings(_env_file=None, REDIS_URL=server.url)  # type: ignore[call-arg]
        redis = connect(server.url, 0.5)
        keys = build_keys(settings, redis, Registry("t", {}, {}))
        assert keys is not None
        policies = build_key_policies(settings, redis, keys)
        plain, _ = await keys.create(KeyPolicy(), "t")
        server.stop()
        for _ in range(46):  # the outage of the issue: 46 settles
            await policies.settle(policies.unchecked(plain).charge, 1000, 1.0)
        for _ in range(2):
            with pytest.raises(StoreFailed):  # kept in process, sent again later
                await policies.spend.flush()
        server.start()
        await policies.spend.flush()
        await policies.spend.flush()  # nothing left, nothing sent twice
        assert (await keys.spend(plain.id))["total"] == pytest.approx(46 * 1000 / 1e6)
        await policies.aclose()
        await redis.aclose()


async def _job(registry_path: Path) -> EmbeddingJob:
    """An embeddings request as validation hands it on, for the policy below HTTP."""
    registry = read_registry(registry_path, dict(os.environ))
    body = b'{"model": "text-embedding-3-small", "input": "hello"}'
    return await parse_embedding_request(body, registry, "rid", lambda _: True)
