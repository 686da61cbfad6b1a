"""The Batch API's durability, across real gateway processes: one SIGKILLed mid-batch and started
again finishes the batch with every custom_id exactly once; two replicas sharing Redis split one
batch; the Redis store works in every REDIS_MODE; a re-run is answered by the cache."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from openai import OpenAI

from tests.batch_support import FAST_BATCHES, results, start, texts_file, wait_for
from tests.conftest import redis_settings
from tests.fakes import FakeUpstream, fake_vector
from tests.harness import GatewayProcess, ThreadedGateway, model_entry, write_registry

UPSTREAM_KEY = "durable-upstream-secret-01"
KEY = "sk-durable-test-key-0001"
DIMS = 16
LINES = 48


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> None:
    upstream.clear()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, upstream: FakeUpstream) -> Path:
    provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
    # One input per upstream call: a batch takes several calls' latency, long enough to kill.
    route = {"provider": "up", "model": "up-m", "max_batch_size": 4, "max_inflight_calls": 2}
    models = {"m": model_entry([route], dimensions=DIMS)}
    return write_registry(
        tmp_path_factory.mktemp("durable") / "models.yaml", {"up": provider}, models
    )


def _env(registry: Path, tmp: Path, **extra: str) -> dict[str, str]:
    return {
        "MODELS_CONFIG": str(registry),
        "GATEWAY_API_KEYS": KEY,
        "BATCH_DIR": str(tmp / "files"),
        "BATCH_DB": str(tmp / "batches.db"),
        "BATCH_CONCURRENCY": "2",
        "RATE_LIMIT_PER_SECOND": "0",
        "SHUTDOWN_DELAY_SECONDS": "0",
        **FAST_BATCHES,
        **extra,
    }


def _texts() -> list[list[str]]:
    return [[f"durable {n} a", f"durable {n} b"] for n in range(LINES)]


def _check_exactly_once(client: OpenAI, batch_id: str) -> None:
    batch = wait_for(client, batch_id, timeout=60)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": LINES, "completed": LINES, "failed": 0}
    out, err = results(client, batch)  # fails on any custom_id seen twice
    assert err == {} and set(out) == {f"req-{n}" for n in range(LINES)}
    for custom_id, entry in out.items():
        n = int(custom_id.split("-")[1])
        vectors = [item["embedding"] for item in entry["response"]["body"]["data"]]
        expected = [fake_vector("up-m", f"durable {n} {s}", DIMS).tolist() for s in "ab"]
        assert vectors == expected  # float32 values as float64: exact


def _progress(client: OpenAI, batch_id: str, least: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        done = client.batches.retrieve(batch_id).request_counts.completed
        if done >= least:
            return done
        assert time.monotonic() < deadline, f"only {done} lines done"
        time.sleep(0.02)


def test_sigkill_mid_batch_then_restart_completes_every_line_once(
    tmp_path: Path, registry: Path, upstream: FakeUpstream
):
    upstream.latency = 0.15
    env = _env(registry, tmp_path)
    gateway = GatewayProcess(env).start()
    try:
        client = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        batch = start(client, texts_file("m", _texts()))
        done = _progress(client, batch.id, 4)
        assert done < LINES
        assert gateway.process is not None
        gateway.process.kill()  # SIGKILL: no drain, no release, claims left mid-lease
        gateway.process.wait()
    finally:
        gateway.stop()
    again = GatewayProcess({**env, "PORT": str(gateway.port)}).start()
    try:
        _check_exactly_once(client, batch.id)
    finally:
        again.stop()


def test_two_replicas_sharing_redis_split_one_batch(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Path, upstream: FakeUpstream
):
    upstream.latency = 0.05
    env = _env(registry, tmp_path, **redis_settings(request, "standalone"))
    env["BATCH_KEY_PREFIX"] = f"egw:batch:{tmp_path.name}:"  # this test's own queue
    with GatewayProcess(env) as first, GatewayProcess(env) as second:
        client = OpenAI(base_url=first.url + "/v1", api_key=KEY, max_retries=0)
        batch = start(client, texts_file("m", _texts()))
        _check_exactly_once(client, batch.id)
        # The other replica answers for the same batch and files.
        other = OpenAI(base_url=second.url + "/v1", api_key=KEY, max_retries=0)
        assert other.batches.retrieve(batch.id).status == "completed"
        workers = {
            pid for gateway in (first, second) for pid in _progress_pids(gateway.output(), batch.id)
        }
        assert len(workers) == 2, "one replica ran every chunk"


def _progress_pids(output: str, batch_id: str) -> set[int]:
    pids = set()
    for raw in output.splitlines():
        if '"batch progress"' in raw and batch_id in raw:
            pids.add(orjson.loads(raw)["pid"])
    return pids


@pytest.mark.parametrize("mode", ["cluster", "sentinel"])
def test_the_redis_store_in_every_mode(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Path, mode: str
):
    settings = {
        k: v
        for k, v in _env(registry, tmp_path).items()
        if k not in ("BATCH_DB", "SHUTDOWN_DELAY_SECONDS")
    }
    settings |= redis_settings(request, mode)
    settings["BATCH_KEY_PREFIX"] = f"egw:batch:{mode}:{tmp_path.name}:"
    with ThreadedGateway(**settings) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        batch = start(client, texts_file("m", _texts()))
        _check_exactly_once(client, batch.id)
        assert batch.id in {b.id for b in client.batches.list()}


def test_a_rerun_is_answered_by_the_cache(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Path, upstream: FakeUpstream
):
    settings = {
        k: v
        for k, v in _env(registry, tmp_path).items()
        if k not in ("BATCH_DB", "SHUTDOWN_DELAY_SECONDS")
    }
    settings |= redis_settings(request, "standalone")
    settings["BATCH_KEY_PREFIX"] = f"egw:batch:{tmp_path.name}:"
    settings["CACHE_KEY_PREFIX"] = f"egw:emb:{tmp_path.name}:"
    with ThreadedGateway(**settings) as gateway:
        client = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        content = texts_file("m", _texts())
        first = wait_for(client, start(client, content).id)
        assert first.usage.input_tokens_details.cached_tokens == 0
        calls = len(upstream.embedding_requests())
        assert calls > 0
        time.sleep(0.3)  # the cache's writes are batched in the background
        second = wait_for(client, start(client, content).id)
        assert len(upstream.embedding_requests()) == calls  # nothing went upstream
        assert second.usage.input_tokens == first.usage.input_tokens
        assert second.usage.input_tokens_details.cached_tokens == second.usage.input_tokens
        out_first, _ = results(client, first)
        out_second, _ = results(client, second)
        body = {k: v["response"]["body"] for k, v in out_first.items()}
        assert {k: v["response"]["body"] for k, v in out_second.items()} == body


def test_a_stopping_gateway_hands_its_chunks_back(
    tmp_path: Path, registry: Path, upstream: FakeUpstream
):
    upstream.latency = 0.3
    # A long lease: only a hand-back lets the next process run these chunks soon.
    env = _env(registry, tmp_path, BATCH_LEASE_SECONDS="120", BATCH_DRAIN_SECONDS="0.2")
    gateway = GatewayProcess(env).start()
    try:
        client = OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
        batch = start(client, texts_file("m", _texts()))
        _progress(client, batch.id, 2)
    finally:
        gateway.stop()  # SIGINT: drain, then exit
    with sqlite3.connect(tmp_path / "batches.db") as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM batch_chunks GROUP BY state"))
    assert states.get("claimed", 0) == 0 and states.get("waiting", 0) > 0
    upstream.latency = 0.0
    with GatewayProcess({**env, "PORT": str(gateway.port)}):
        began = time.monotonic()
        _check_exactly_once(client, batch.id)
        assert time.monotonic() - began < 60  # well inside the lease the chunks were under


def test_a_stopping_gateway_hands_its_redis_claims_back(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Path, upstream: FakeUpstream
):
    upstream.latency = 0.3
    settings = {k: v for k, v in _env(registry, tmp_path).items() if k not in ("BATCH_DB",)}
    settings |= redis_settings(request, "standalone")
    settings |= {
        "BATCH_KEY_PREFIX": f"egw:batch:{tmp_path.name}:",
        "BATCH_LEASE_SECONDS": "120",  # only a hand-back lets the next gateway run them soon
        "BATCH_DRAIN_SECONDS": "0.2",
    }
    with ThreadedGateway(**settings) as first:
        client = OpenAI(base_url=first.url + "/v1", api_key=KEY, max_retries=0)
        batch = start(client, texts_file("m", _texts()))
        _progress(client, batch.id, 2)
    upstream.latency = 0.0
    with ThreadedGateway(**settings) as second:
        client = OpenAI(base_url=second.url + "/v1", api_key=KEY, max_retries=0)
        began = time.monotonic()
        _check_exactly_once(client, batch.id)
        assert time.monotonic() - began < 60  # well inside the lease the chunks were under
