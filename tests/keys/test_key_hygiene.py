"""Input and store hygiene of managed keys: absurd limits and budgets are a 400 naming the field
(and one stored before cannot break the listing), and a SQLite store locked by another process
costs a request KEYS_DB_TIMEOUT_MS at most, never seconds."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN, admin, create_key, embed, wait_until

MODEL = "text-embedding-3-small"
BOUND_MS = 300


@pytest.fixture
def gateway(registry_path, tmp_path) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(
        MODELS_CONFIG=str(registry_path),
        GATEWAY_ADMIN_TOKEN=ADMIN["authorization"].removeprefix("Bearer "),
        KEYS_DB=str(tmp_path / "keys.db"),
        KEYS_DB_TIMEOUT_MS=BOUND_MS,
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=0,
    ) as server:
        yield server


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_per_minute", 10**20),
        ("rate_limit_per_second", 10**9),
        ("budget_usd", 1e300),
    ],
)
def test_absurd_limits_and_budgets_are_a_400_naming_the_field(gateway, field, value):
    created = admin(gateway.url, "POST", "/keys", json={field: value})
    assert created.status_code == 400
    assert created.json()["error"]["param"] == field
    key = create_key(gateway.url)
    patched = admin(gateway.url, "PATCH", f"/keys/{key['id']}", json={field: value})
    assert patched.status_code == 400 and patched.json()["error"]["param"] == field
    assert admin(gateway.url, "GET", "/keys").status_code == 200


def test_a_record_stored_with_an_absurd_limit_does_not_break_the_listing(gateway, tmp_path):
    key = create_key(gateway.url, name="stored-before-the-bounds")
    with sqlite3.connect(tmp_path / "keys.db") as db:  # as an older gateway could store it
        (raw,) = db.execute("SELECT record FROM api_keys WHERE id = ?", (key["id"],)).fetchone()
        record = json.loads(raw) | {"tokens_per_minute": 10**20}
        db.execute("UPDATE api_keys SET record = ? WHERE id = ?", (json.dumps(record), key["id"]))
    time.sleep(0.6)  # past the lookup cache
    listed = admin(gateway.url, "GET", "/keys")
    assert listed.status_code == 200
    shown = next(k for k in listed.json()["data"] if k["id"] == key["id"])
    assert shown["tokens_per_minute"] == 10**12  # read as the bound
    assert embed(gateway.url, key["key"], MODEL).status_code == 200


def test_a_locked_sqlite_store_is_a_quick_503_and_spend_catches_up(gateway, tmp_path: Path):
    budgeted = create_key(gateway.url, budget_usd=100)
    plain = create_key(gateway.url)
    for key in (budgeted, plain):
        assert embed(gateway.url, key["key"], MODEL).status_code == 200

    def spent() -> float:
        return float(admin(gateway.url, "GET", f"/keys/{plain['id']}").json()["spend_usd"]["total"])

    wait_until(lambda: spent() > 0)  # the first request's spend is written
    one_request = spent()
    holder = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        began = time.monotonic()
        refused = embed(gateway.url, budgeted["key"], MODEL, "while locked")
        refused_in = time.monotonic() - began
        began = time.monotonic()
        served = embed(gateway.url, plain["key"], MODEL, "while locked")
        served_in = time.monotonic() - began
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    print(f"\nlocked store: budgeted key 503 in {refused_in:.3f} s, plain key in {served_in:.3f} s")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "key_store_unavailable"
    assert refused.headers["retry-after"] == "1"
    assert refused_in < BOUND_MS / 1000 + 1.0  # the bound, and a busy machine's slack
    # A key without a budget needs no write before it is served: its spend waits in process.
    assert served.status_code == 200 and served_in < BOUND_MS / 1000 + 1.0

    # What the key spent while the store was locked waited in process, and is written once.
    wait_until(lambda: spent() > one_request, timeout=40)
    assert spent() == pytest.approx(2 * one_request)
    assert httpx.get(f"{gateway.url}/readyz").json()["books"]["spend"]["ok"]
