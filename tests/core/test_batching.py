"""Micro-batching and pacing on real sockets: concurrent requests merge into fewer upstream calls,
each gets exactly its own vectors and its share of the usage, a rejected input fails only its
own request, and calls stay under a provider's `max_requests_per_second` across replicas."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, fake_vector
from tests.fakes.vectors import fake_token_count
from tests.harness import GatewayProcess, ThreadedGateway, model_entry, write_registry
from tests.keys_support import wait_until
from tests.redis_server import RedisServer

UPSTREAM_KEY = "batching-upstream-secret-0001"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
DIMS = 16


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean(upstream: FakeUpstream) -> None:
    upstream.clear()


def provider(upstream: FakeUpstream, **knobs: object) -> dict:
    return {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY, **knobs}


def registry(tmp_path, upstream: FakeUpstream, **provider_knobs: object):
    models = {
        "merged": model_entry(
            [{"provider": "up", "model": "up-merged"}], dimensions=DIMS, supports_dimensions=True
        ),
        "other": model_entry([{"provider": "up", "model": "up-other"}], dimensions=DIMS),
        "solo": model_entry([{"provider": "up", "model": "up-solo", "micro_batching": False}]),
    }
    providers = {"up": provider(upstream, **provider_knobs)}
    return write_registry(tmp_path / "models.yaml", providers, models)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream, redis_server: RedisServer) -> Iterator[ThreadedGateway]:
    path = registry(tmp_path_factory.mktemp("batching"), upstream)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=0,
        REDIS_URL=redis_server.url,
        CACHE_KEY_PREFIX="egw:batching-test:",
    ) as server:
        yield server


def body(model: str, texts: list[str], dimensions: int | None = None) -> dict:
    payload: dict = {"model": model, "input": texts, "encoding_format": "float"}
    if dimensions is not None:
        payload["dimensions"] = dimensions
    return payload


def burst(url: str, bodies: list[dict], concurrency: int) -> list[httpx.Response]:
    """Send every body at once (at most `concurrency` in flight), answers in `bodies` order."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=concurrency)
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, limits=limits, timeout=30) as c:

            async def one(payload: dict) -> httpx.Response:
                async with gate:
                    return await c.post("/v1/embeddings", json=payload)

            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(run())


def vectors(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return [item["embedding"] for item in data]


def expected(upstream_model: str, texts: list[str], dimensions: int | None = None) -> list:
    return [
        np.asarray(fake_vector(upstream_model, t, DIMS, dimensions), dtype=np.float32).tolist()
        for t in texts
    ]


def embedding_calls(upstream: FakeUpstream) -> list[dict]:
    return [r.json for r in upstream.embedding_requests()]


def test_concurrent_single_input_requests_share_calls_and_each_gets_its_own_vector_and_usage(
    gateway, upstream
):
    # Every call slot stays busy while the burst arrives, however slowly a busy machine's
    # clients send it: the fewer calls then depend on merging, not on timing.
    upstream.latency = 0.2
    texts = [f"single {i} " + "word " * (i % 7) for i in range(64)]
    answers = burst(gateway.url, [body("merged", [t]) for t in texts], concurrency=64)
    for text, answer in zip(texts, answers, strict=True):
        assert vectors(answer) == expected("up-merged", [text])
    calls = embedding_calls(upstream)
    assert len(calls) <= len(texts) // 4, len(calls)  # 4 slots; 64 requests; the rest merge
    assert sorted(t for c in calls for t in c["input"]) == sorted(texts)  # each input sent once
    # The upstream's totals, split across the requests each call carried, sum back exactly.
    reported = sum(a.json()["usage"]["prompt_tokens"] for a in answers)
    assert reported == sum(fake_token_count(t) for t in texts)


def test_merging_keeps_models_dimensions_and_cache_hits_apart(gateway, upstream):
    warm = [f"warm {i}" for i in range(8)]
    vectors(burst(gateway.url, [body("merged", warm)], concurrency=1)[0])
    # Cache writes are batched in the background: wait until these are really in Redis.
    wait_until(lambda: burst(gateway.url, [body("merged", warm)], 1)[0].headers["x-cache"] == "hit")
    upstream.clear()
    # Slow enough that the calls stay busy while even a busy machine's clients send the burst,
    # so how few calls there are depends on merging, not on timing.
    upstream.latency = 0.5
    bodies, wanted = [], []
    for i in range(48):
        texts = [f"mixed {i}", warm[i % 8], f"mixed {i} b"]
        model, dims = [("merged", None), ("merged", 8), ("other", None)][i % 3]
        bodies.append(body(model, texts, dims))
        wanted.append(expected(f"up-{model}", texts, dims))
    answers = burst(gateway.url, bodies, concurrency=48)
    for answer, want in zip(answers, wanted, strict=True):
        assert vectors(answer) == want
    calls = embedding_calls(upstream)
    assert len(calls) < len(bodies) // 2
    for call in calls:  # the vectors cached at full width are never asked for again
        if call["model"] == "up-merged" and call.get("dimensions") is None:
            assert not set(call["input"]) & set(warm)


def test_a_rejected_input_in_a_merged_call_fails_only_its_own_request(gateway, upstream):
    upstream.latency = 0.2
    upstream.reject_inputs = {"poison pill"}
    bodies = [body("merged", [f"healthy {i}"]) for i in range(24)]
    bodies[9] = body("merged", ["healthy 9", "poison pill"])
    answers = burst(gateway.url, bodies, concurrency=24)
    assert answers[9].status_code == 400
    error = answers[9].json()["error"]
    assert error["type"] == "invalid_request_error" and "poison pill" in error["message"]
    for i, answer in enumerate(answers):
        if i != 9:
            assert vectors(answer) == expected("up-merged", [f"healthy {i}"])
    assert len(embedding_calls(upstream)) < len(bodies)  # they did merge before the bisect


def test_a_route_with_micro_batching_off_sends_every_request_on_its_own(gateway, upstream):
    upstream.latency = 0.05
    texts = [f"solo {i}" for i in range(16)]
    answers = burst(gateway.url, [body("solo", [t]) for t in texts], concurrency=16)
    for text, answer in zip(texts, answers, strict=True):
        assert vectors(answer) == expected("up-solo", [text])
    assert sorted(c["input"] for c in embedding_calls(upstream)) == sorted([t] for t in texts)


# Pacing: the fake refuses past UPSTREAM_LIMIT calls a second, as NanoGPT does; the registry
# paces at PACED. The gap between them is the slack for scheduling jitter on a busy machine:
# without pacing the same load sends several hundred calls a second.
PACED = 20
UPSTREAM_LIMIT = 25


def test_calls_stay_under_the_provider_s_limit_and_batches_grow_instead(tmp_path, upstream):
    upstream.max_requests_per_second = UPSTREAM_LIMIT
    path = registry(tmp_path, upstream, max_requests_per_second=PACED)
    texts = [f"paced {i}" for i in range(300)]
    with ThreadedGateway(
        MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY, RATE_LIMIT_PER_SECOND=0
    ) as gateway:
        started = time.monotonic()
        answers = burst(gateway.url, [body("merged", [t]) for t in texts], concurrency=64)
        elapsed = time.monotonic() - started
    for text, answer in zip(texts, answers, strict=True):
        assert vectors(answer) == expected("up-merged", [text])
    assert upstream.rate_limited == 0
    calls = len(embedding_calls(upstream))
    assert calls <= PACED * elapsed + PACED  # spaced, not bursting
    # Merged: one call per request at 20 a second would take 15 s. How much merges depends on
    # how fast the clients, in this process with the gateway, keep requests coming.
    assert calls < len(texts) / 2


def process_env(path, redis_server: RedisServer, **extra: str) -> dict[str, str]:
    """A GatewayProcess's environment: this registry, Redis, no limits in the way."""
    return {
        "MODELS_CONFIG": str(path),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_INTERNAL_TOKEN": "",
        "RATE_LIMIT_PER_SECOND": "0",
        "AUTH_FAILURES_PER_MINUTE": "0",
        "REDIS_URL": redis_server.url,
        **extra,
    }


def test_two_replicas_share_one_pace_through_redis(tmp_path, upstream, redis_server):
    upstream.max_requests_per_second = UPSTREAM_LIMIT
    path = registry(tmp_path, upstream, max_requests_per_second=PACED)
    env = process_env(
        path,
        redis_server,
        # Slack for a loaded machine: a reservation slower than this is paced in process.
        REDIS_TIMEOUT_MS="500",
        RATE_LIMIT_KEY_PREFIX=f"egw:pace-test-{time.monotonic_ns()}:",
    )
    with GatewayProcess(dict(env)) as first, GatewayProcess(dict(env)) as second:

        async def both() -> list[list[httpx.Response]]:
            texts = [f"replica {i}" for i in range(400)]
            loop = asyncio.get_running_loop()
            halves = [
                loop.run_in_executor(
                    None, burst, g.url, [body("merged", [t]) for t in texts[n::2]], 32
                )
                for n, g in enumerate((first, second))
            ]
            return list(await asyncio.gather(*halves))

        answers = [a for half in asyncio.run(both()) for a in half]
    assert [a.status_code for a in answers if a.status_code != 200] == []
    assert upstream.rate_limited == 0
    assert len(embedding_calls(upstream)) < len(answers) / 2  # merged (see the test above)


def test_a_stop_right_after_a_burst_loses_no_cache_write_and_no_usage(
    tmp_path, upstream, redis_server
):
    upstream.latency = 0.02
    path = registry(tmp_path, upstream)
    run = f"{time.monotonic_ns()}"
    env = process_env(
        path,
        redis_server,
        CACHE_KEY_PREFIX=f"egw:stop-cache-{run}:",
        USAGE_KEY_PREFIX=f"egw:stop-usage-{run}:",
    )
    texts = [f"stopped {i}" for i in range(120)]
    with GatewayProcess(dict(env)) as gateway:
        answers = burst(gateway.url, [body("merged", [t]) for t in texts], concurrency=32)
        gateway.stop()  # at once: the writes and usage still queued are flushed on the way out
    assert [a.status_code for a in answers] == [200] * len(texts)
    cached = redis_server.client().keys(f"egw:stop-cache-{run}:*")
    assert len(cached) == len(texts)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        REDIS_URL=redis_server.url,
        USAGE_KEY_PREFIX=env["USAGE_KEY_PREFIX"],
        RATE_LIMIT_PER_SECOND=0,
    ) as reader:
        usage = httpx.get(f"{reader.url}/v1/usage", headers=AUTH, timeout=10).json()
    total = usage["total"]
    assert total["requests"] == len(texts)
    assert total["input_tokens"] == sum(a.json()["usage"]["prompt_tokens"] for a in answers)


def test_redis_gone_mid_burst_fails_no_request(tmp_path, upstream):
    upstream.latency = 0.01
    path = registry(tmp_path, upstream, max_requests_per_second=500)
    own = RedisServer().start()
    texts = [f"outage {i}" for i in range(300)]
    try:
        with ThreadedGateway(
            MODELS_CONFIG=str(path),
            GATEWAY_API_KEYS=CLIENT_KEY,
            AUTH_FAILURES_PER_MINUTE=0,
            RATE_LIMIT_PER_SECOND=100_000,  # counted in Redis until it goes, then in process
            REDIS_URL=own.url,
        ) as gateway:

            def kill_when_busy() -> None:
                deadline = time.monotonic() + 20
                while len(upstream.embedding_requests()) < 5 and time.monotonic() < deadline:
                    time.sleep(0.005)
                own.kill()

            killer = threading.Thread(target=kill_when_busy)
            killer.start()
            answers = burst(gateway.url, [body("merged", [t]) for t in texts], concurrency=32)
            killer.join()
    finally:
        own.stop()
    assert [a.status_code for a in answers if a.status_code != 200] == []
    for text, answer in zip(texts, answers, strict=True):
        assert vectors(answer) == expected("up-merged", [text])
