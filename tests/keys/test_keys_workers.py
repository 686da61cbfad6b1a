"""Managed keys with two worker processes, as `embeddings-gateway` runs them, on both stores:
a change on one worker holds on every worker within a second, per-key limits are shared, and
keys outlive a restart. These also measure what the README quotes (run with -s to see)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest

from app.core.tokens import count_tokens
from tests.conftest import CLIENT_KEY
from tests.harness import ROOT, GatewayProcess
from tests.keys_support import ADMIN_TOKEN, admin, create_key, embed

MODEL = "text-embedding-3-small"
WORKERS = 2


def store_env(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if store == "redis":
        redis_server = request.getfixturevalue("redis_server")
        tag = uuid.uuid4().hex[:8]
        return {
            "REDIS_URL": redis_server.url,
            "KEYS_KEY_PREFIX": f"keys:{tag}:",
            "RATE_LIMIT_KEY_PREFIX": f"rl:{tag}:",
            "USAGE_KEY_PREFIX": f"usage:{tag}:",
            "CACHE_ENABLED": "false",
        }
    return {"KEYS_DB": str(tmp_path / "keys.db")}


def gateway_env(registry_path: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        "MODELS_CONFIG": str(registry_path),
        "WORKERS": str(WORKERS),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_INTERNAL_TOKEN": "",
        "RATE_LIMIT_PER_SECOND": "0",
        # These tests poll a revoked key until it fails on every worker; the failed-auth
        # throttle (tests/api/test_hostile_clients.py) would turn those 401s into 429s.
        "AUTH_FAILURES_PER_MINUTE": "0",
        "LOG_LEVEL": "info",
        "REDIS_URL": "",
        **extra,
    }


def started(gateway: GatewayProcess) -> GatewayProcess:
    gateway.start()
    deadline = time.monotonic() + 30
    while gateway.output().count("managed keys in") < WORKERS:
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    return gateway


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> dict[str, str]:
    env = store_env(request.param, request, tmp_path)
    env["_store"] = request.param
    return env


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def shared_store(request, tmp_path_factory) -> dict[str, str]:
    env = store_env(request.param, request, tmp_path_factory.mktemp("keys"))
    env["_store"] = request.param
    return env


@pytest.fixture(scope="module")
def two_workers(registry_path, shared_store) -> Iterator[GatewayProcess]:
    """One two-worker gateway per store for the tests that only need a running one: each test
    makes its own keys, so none sees another's, and starting a gateway costs ~3 s."""
    gateway = started(GatewayProcess(gateway_env(registry_path, shared_store)))
    try:
        yield gateway
    finally:
        gateway.stop()


def access_lines(gateway: GatewayProcess, key_id: str) -> list[dict]:
    lines = []
    for line in gateway.output().splitlines():
        if '"app.access"' in line and key_id in line:
            lines.append(json.loads(line))
    return lines


def pids_serving(gateway: GatewayProcess, key_id: str, status: int) -> set[int]:
    return {line["pid"] for line in access_lines(gateway, key_id) if line["status"] == status}


def warm_every_worker(gateway: GatewayProcess, key: str, key_id: str) -> None:
    """Fresh connections until both workers have served (and cached) this key."""
    for _ in range(200):
        assert embed(gateway.url, key, MODEL).status_code == 200
        time.sleep(0.01)  # let the access line reach the log
        if len(pids_serving(gateway, key_id, 200)) == WORKERS:
            return
    raise AssertionError("one worker served every request")


def test_a_new_key_works_at_once_on_every_worker_through_the_sdk(two_workers):
    created = create_key(two_workers.url, name="fresh", team="docs")
    # A fresh connection per call, so calls land on both workers, the creating one and not.
    client = openai.OpenAI(
        base_url=f"{two_workers.url}/v1",
        api_key=created["key"],
        max_retries=0,
        default_headers={"connection": "close"},
    )
    for i in range(200):
        response = client.embeddings.create(model=MODEL, input=f"first use {i}")
        assert len(response.data[0].embedding) == 16
        time.sleep(0.01)  # let the access line reach the log
        if len(pids_serving(two_workers, created["id"], 200)) == WORKERS:
            break
    assert len(pids_serving(two_workers, created["id"], 200)) == WORKERS
    assert created["key"] not in two_workers.output()
    assert ADMIN_TOKEN not in two_workers.output()


@pytest.mark.parametrize(
    "change",
    ["revoke", "disable", "expire"],
)
def test_a_change_reaches_every_worker_within_a_second(two_workers, shared_store, change):
    created = create_key(two_workers.url, name=f"to-{change}")
    key, key_id = created["key"], created["id"]
    warm_every_worker(two_workers, key, key_id)  # both workers hold the key in their cache
    mark = len(two_workers.output())

    if change == "revoke":
        answer = admin(two_workers.url, "DELETE", f"/keys/{key_id}")
    elif change == "disable":
        answer = admin(two_workers.url, "PATCH", f"/keys/{key_id}", json={"disabled": True})
    else:
        now = datetime.now(UTC).isoformat()
        answer = admin(two_workers.url, "PATCH", f"/keys/{key_id}", json={"expires_at": now})
    assert answer.status_code == 200
    changed = time.monotonic()
    seen: list[tuple[float, int]] = []
    while time.monotonic() - changed < 1.6:  # bounded: ~1.6 s of fresh-connection calls
        status = embed(two_workers.url, key, MODEL).status_code
        seen.append((time.monotonic() - changed, status))
    last_ok = max((t for t, s in seen if s == 200), default=0.0)
    print(f"\n{shared_store['_store']}: {change} took effect on every worker after {last_ok:.3f} s")
    assert last_ok < 1.0
    assert {s for t, s in seen if t >= 1.0} == {401}
    # Every worker refused it (a refused key has no id yet, so read the 401 lines after the change).
    refused = {
        json.loads(line)["pid"]
        for line in two_workers.output()[mark:].splitlines()
        if '"app.access"' in line and '"status":401' in line
    }
    assert len(refused) == WORKERS


def test_rotation_with_grace_holds_on_every_worker(two_workers):
    created = create_key(two_workers.url)
    warm_every_worker(two_workers, created["key"], created["id"])
    rotated = admin(
        two_workers.url, "POST", f"/keys/{created['id']}/rotate", json={"grace_seconds": 1.5}
    ).json()
    began = time.monotonic()
    statuses = [embed(two_workers.url, created["key"], MODEL).status_code for _ in range(10)]
    if time.monotonic() - began < 1.4:
        assert set(statuses) == {200}
    assert embed(two_workers.url, rotated["key"], MODEL).status_code == 200
    while time.monotonic() - began < 2.6:
        time.sleep(0.05)
    assert {embed(two_workers.url, created["key"], MODEL).status_code for _ in range(10)} == {401}
    assert {embed(two_workers.url, rotated["key"], MODEL).status_code for _ in range(10)} == {200}


def test_keys_survive_a_gateway_restart(registry_path, store):
    env = gateway_env(registry_path, store)
    with GatewayProcess(env) as first:
        kept = create_key(first.url, name="kept", budget_usd=100)
        gone = create_key(first.url, name="gone")
        assert embed(first.url, kept["key"], MODEL).status_code == 200
        admin(first.url, "DELETE", f"/keys/{gone['id']}")
        spent = admin(first.url, "GET", f"/keys/{kept['id']}").json()["spend_usd"]["total"]
    assert spent > 0
    with GatewayProcess(env) as second:
        assert embed(second.url, kept["key"], MODEL).status_code == 200
        assert embed(second.url, gone["key"], MODEL).status_code == 401
        shown = admin(second.url, "GET", f"/keys/{kept['id']}").json()
        assert shown["name"] == "kept" and shown["spend_usd"]["total"] > spent


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", *args],
        env={**env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_manages_the_same_keys_a_running_gateway_serves(registry_path, store):
    import os

    env = {**os.environ, **gateway_env(registry_path, store)}
    made = run_cli(env, "create", "--name", "boot", "--team", "ops", "--models", MODEL)
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith("egw-") and created["models"] == [MODEL]
    assert '"action": "create"' in made.stderr or '"action":"create"' in made.stderr
    assert created["key"] not in made.stderr
    with GatewayProcess(gateway_env(registry_path, store)) as gateway:
        assert embed(gateway.url, created["key"], MODEL).status_code == 200
        assert embed(gateway.url, created["key"], "aiml-only").status_code == 400  # not allowed

        listed = json.loads(run_cli(env, "list", "--team", "ops").stdout)
        assert [k["id"] for k in listed] == [created["id"]]
        assert created["key"] not in json.dumps(listed)
        updated = run_cli(env, "update", created["id"], "--tokens-per-minute", "5000")
        assert json.loads(updated.stdout)["tokens_per_minute"] == 5000
        rotated = json.loads(run_cli(env, "rotate", created["id"]).stdout)
        deadline = time.monotonic() + 2
        while embed(gateway.url, created["key"], MODEL).status_code != 401:
            assert time.monotonic() < deadline
        assert embed(gateway.url, rotated["key"], MODEL).status_code == 200
        assert json.loads(run_cli(env, "show", created["id"]).stdout)["spend_usd"]["total"] > 0
        assert run_cli(env, "revoke", created["id"]).returncode == 0
        bad = run_cli(env, "update", created["id"], "--budget-usd", "-1")
        assert bad.returncode == 1 and "budget_usd" in bad.stderr
        assert run_cli(env, "show", "key_missing").returncode == 1


# --- per-key limits across workers (Redis) ----------------------------------------------------


async def offer(
    url: str, key: str, rate: float, seconds: float, body: dict | Callable[[int], dict]
) -> tuple[list[int], float]:
    """`rate` requests/s for `seconds` (bounded), at most 16 at once, each on a fresh
    connection: kept-alive connections opened together all land on one worker."""
    statuses: list[int] = []
    gate = asyncio.Semaphore(16)
    headers = {"authorization": f"Bearer {key}", "connection": "close"}
    async with httpx.AsyncClient(
        base_url=url, timeout=10, limits=httpx.Limits(max_connections=16)
    ) as client:

        async def one(i: int) -> None:
            try:
                payload = body(i) if callable(body) else body
                response = await client.post("/v1/embeddings", headers=headers, json=payload)
                statuses.append(response.status_code)
            finally:
                gate.release()

        loop = asyncio.get_running_loop()
        tasks = []
        async with asyncio.timeout(seconds + 15):
            began = loop.time()
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, began + i / rate - loop.time()))
                await gate.acquire()
                if loop.time() - began >= seconds:
                    gate.release()
                    break
                tasks.append(asyncio.create_task(one(i)))
            offered_for = loop.time() - began
            await asyncio.gather(*tasks)
    return statuses, offered_for


@pytest.fixture(scope="module")
def redis_workers(registry_path, request, tmp_path_factory) -> Iterator[GatewayProcess]:
    """Shared by the limit tests: each limits a key of its own."""
    path = tmp_path_factory.mktemp("redis-keys")
    gateway = started(GatewayProcess(gateway_env(registry_path, store_env("redis", request, path))))
    try:
        yield gateway
    finally:
        gateway.stop()


async def test_requests_per_second_per_key_hold_across_workers(redis_workers):
    limit, seconds = 20, 3.0
    key = create_key(redis_workers.url, rate_limit_per_second=limit)
    body = {"model": MODEL, "input": "limited", "encoding_format": "float"}
    statuses, offered_for = await offer(redis_workers.url, key["key"], 3 * limit, seconds, body)
    admitted, limited = statuses.count(200), statuses.count(429)
    expected = limit * seconds
    print(
        f"\nper-key {limit} req/s, {len(statuses)} offered in {offered_for:.2f} s over "
        f"{WORKERS} workers: {admitted} admitted ({100 * (admitted / expected - 1):+.1f} %)"
    )
    assert admitted + limited == len(statuses)
    assert len(statuses) >= 2 * expected  # the load stayed well over the limit
    assert abs(admitted - expected) <= 0.05 * expected
    assert len(pids_serving(redis_workers, key["id"], 200)) == WORKERS


async def test_tokens_per_minute_per_key_hold_across_workers(redis_workers):
    text = "token budget " * 20
    tokens = count_tokens([text])[0]
    fits = 40
    key = create_key(redis_workers.url, tokens_per_minute=fits * tokens)
    body = {"model": MODEL, "input": text, "encoding_format": "float"}
    statuses, _ = await offer(redis_workers.url, key["key"], 60, 2.0, body)  # 3x what fits
    admitted = statuses.count(200)
    print(
        f"\nper-key {fits * tokens} tokens/min, {len(statuses)} requests of {tokens} tokens "
        f"over {WORKERS} workers: {admitted} admitted (expected {fits})"
    )
    assert statuses.count(429) == len(statuses) - admitted
    assert len(statuses) >= 2.5 * fits
    assert abs(admitted - fits) <= 0.05 * fits
    assert len(pids_serving(redis_workers, key["id"], 200)) == WORKERS
    last = embed(redis_workers.url, key["key"], MODEL, text)
    assert last.status_code == 429
    assert last.headers["x-ratelimit-limit-tokens"] == str(fits * tokens)
    assert last.headers["x-ratelimit-remaining-tokens"] == str(fits * tokens - admitted * tokens)
    assert int(last.headers["retry-after"]) > 1
    assert last.json()["error"]["code"] == "rate_limit_exceeded"


# Budgets across both workers, on both stores: tests/keys/test_budgets.py.


def test_an_unusable_keys_db_stops_start_up_with_one_line(registry_path):
    import os

    env = {
        **os.environ,
        **gateway_env(registry_path, {"KEYS_DB": "/proc/no-such-dir/keys.db"}),
        "WORKERS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "check-config"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "configuration error: KEYS_DB=/proc/no-such-dir/keys.db" in result.stderr
