"""The usage ledger under concurrent readers and writers, faults and a SIGKILL, on Redis and on
the SQLite file a gateway without Redis shares between its workers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.auth.callers import key_id
from app.state.batched_writes import StoreFailed
from app.state.usage_ledger import Batch, UsageLedger, today
from app.state.usage_sqlite import SQLiteUsageBooks, usage_path
from tests.harness import GatewayProcess, ThreadedGateway
from tests.keys_support import wait_until

MODEL = "text-embedding-3-small"
WORKERS = 2


def gateway_env(registry_path: Path, key: str, store: dict[str, str]) -> dict[str, str]:
    return {
        "MODELS_CONFIG": str(registry_path),
        "WORKERS": str(WORKERS),
        "GATEWAY_API_KEYS": key,
        "GATEWAY_INTERNAL_TOKEN": "",
        "GATEWAY_ADMIN_TOKEN": "",
        "RATE_LIMIT_PER_SECOND": "0",
        "AUTH_FAILURES_PER_MINUTE": "0",
        "CACHE_ENABLED": "false",
        "REDIS_URL": "",
        **store,
    }


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> dict[str, str]:
    env = {"KEYS_DB": str(tmp_path / "keys.db")}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
        env["USAGE_KEY_PREFIX"] = f"usage:{uuid.uuid4().hex[:8]}:"
    return env


def started(gateway: GatewayProcess) -> GatewayProcess:
    gateway.start()
    wait_until(lambda: gateway.output().count("configuration") >= WORKERS, timeout=30)
    return gateway


async def _load(url: str, key: str, seconds: float) -> tuple[int, list[int]]:
    """8 writers and 16 readers at once, for `seconds` (bounded in count too): requests
    answered 200, and every usage read's status."""
    answered, reads = 0, []
    headers = {"authorization": f"Bearer {key}", "connection": "close"}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:

        async def write(n: int) -> None:
            nonlocal answered
            for i in range(200):
                if time.monotonic() > deadline:
                    return
                body = {"model": MODEL, "input": f"usage {n} {i}", "encoding_format": "float"}
                if (await client.post("/v1/embeddings", json=body)).status_code == 200:
                    answered += 1

        async def read() -> None:
            for _ in range(400):
                if time.monotonic() > deadline:
                    return
                reads.append((await client.get("/v1/usage")).status_code)

        await asyncio.gather(*(write(n) for n in range(8)), *(read() for _ in range(16)))
    return answered, reads


async def test_usage_under_concurrent_readers_and_writers_survives_a_sigkill(registry_path, store):
    key = f"sk-usage-{uuid.uuid4().hex[:12]}"
    env = gateway_env(registry_path, key, store)
    gateway = started(GatewayProcess(env))
    try:
        answered, reads = await _load(gateway.url, key, 1.2)
        await asyncio.sleep(2.5)  # a second's flush, and room for a busy machine
    finally:
        gateway.kill()  # no shutdown: no last flush
    print(f"\n{answered} requests, {len(reads)} usage reads beside them")
    assert answered > 20 and len(reads) > 50
    assert set(reads) == {200}  # no read ever broke a flush (or itself)
    assert _stored_requests(store, key_id(key)) == answered  # in the shared store, once


def _stored_requests(store: dict[str, str], key: str) -> int:
    """Today's requests of `key` as the shared store holds them (nothing of the dead
    gateway's memory can answer this)."""
    day = today().isoformat()
    if "REDIS_URL" in store:
        client = redis.Redis.from_url(store["REDIS_URL"])
        with client:
            raw = client.hget(f"{store['USAGE_KEY_PREFIX']}{day}:{key}", f"{MODEL}\trequests")
        return int(raw or 0)
    with sqlite3.connect(usage_path(store["KEYS_DB"])) as db:
        row = db.execute(
            "SELECT requests FROM usage WHERE day = ? AND key_id = ? AND model = ?",
            (day, key, MODEL),
        ).fetchone()
    return int(row[0]) if row else 0


class _Flaky(SQLiteUsageBooks):
    """Real SQLite books whose first `failures` writes fail: one like a bug, then like a
    locked file."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path, timeout=1.0)
        self.failures = failures

    async def apply(self, batch_id: str, batch: Batch) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("a bug") if self.failures % 2 else StoreFailed("locked")
        await super().apply(batch_id, batch)


async def test_the_writer_outlives_any_error_and_says_so(tmp_path, caplog):
    books = _Flaky(tmp_path / "usage.db", failures=3)
    ledger = UsageLedger(books, report_timeout=1.0, interval=0.02)
    ledger.record(
        "key_a", MODEL, input_tokens=3, upstream_tokens=3, cached_tokens=0, price_per_million=1
    )
    writer = asyncio.create_task(ledger.run())
    try:
        await _until(lambda: not ledger.health()["ok"])
        assert ledger.health()["last_error"] is not None
        await _until(lambda: books.failures == 0 and ledger.health()["ok"])
        rows = await ledger.report("key_a", today(), today())
        assert [(r.requests, r.input_tokens) for r in rows] == [(1, 3)]  # once, not 4 times
    finally:
        writer.cancel()
        await ledger.aclose()
    assert any("failed" in r.getMessage() for r in caplog.records)  # the bug was logged


async def _until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def sqlite_gateway(registry_path, tmp_path) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(
        MODELS_CONFIG=str(registry_path),
        GATEWAY_API_KEYS="sk-ledger-locked-0001",
        RATE_LIMIT_PER_SECOND=0,
        KEYS_DB=str(tmp_path / "keys.db"),
        KEYS_DB_TIMEOUT_MS=100,
    ) as gateway:
        yield gateway


def test_a_locked_usage_file_shows_on_readyz_and_in_metrics_then_catches_up(
    sqlite_gateway, tmp_path
):
    headers = {"authorization": "Bearer sk-ledger-locked-0001"}
    body = {"model": MODEL, "input": "locked ledger", "encoding_format": "float"}
    url = sqlite_gateway.url
    assert httpx.post(f"{url}/v1/embeddings", headers=headers, json=body).status_code == 200
    wait_until(lambda: usage_path(tmp_path / "keys.db").exists())
    holder = sqlite3.connect(usage_path(tmp_path / "keys.db"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the file
    try:
        assert httpx.post(f"{url}/v1/embeddings", headers=headers, json=body).status_code == 200

        def failing() -> bool:
            return not httpx.get(f"{url}/readyz").json()["books"]["usage"]["ok"]

        wait_until(failing, timeout=10)
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200  # details, not a verdict: the gateway still serves
        metrics = httpx.get(f"{url}/metrics").text
        assert 'embeddings_gateway_batched_write_failures_total{ledger="usage"}' in metrics
        # WAL: the file is still readable, so a report is whole: what is written, plus what
        # waits in this process.
        answer = httpx.get(f"{url}/v1/usage", headers=headers)
        assert answer.status_code == 200 and answer.json()["total"]["requests"] == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_until(lambda: httpx.get(f"{url}/readyz").json()["books"]["usage"]["ok"], timeout=40)
    report = httpx.get(f"{url}/v1/usage", headers=headers).json()
    assert report["total"]["requests"] == 2
