"""Failed-authentication throttles catch guessers, not teams: admin-token guessing is throttled
per IP with a bounded audit log, and a known key that was revoked, disabled or expired gets its
401 (with its key id in the access log) without locking its IP out."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN, admin, create_key, embed

MODEL = "text-embedding-3-small"
LIMIT = 5


@pytest.fixture
def gateway(registry_path, tmp_path) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(
        MODELS_CONFIG=str(registry_path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        GATEWAY_ADMIN_TOKEN=ADMIN["authorization"].removeprefix("Bearer "),
        KEYS_DB=str(tmp_path / "keys.db"),
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=LIMIT,
    ) as server:
        yield server


def test_admin_token_guessing_is_throttled_and_its_log_bounded(gateway, caplog):
    caplog.set_level(logging.INFO, logger="app.audit")
    statuses = []
    with httpx.Client(base_url=f"{gateway.url}/admin/v1", timeout=10) as client:
        for n in range(60):  # bounded: a guesser's first minute, compressed
            guess = {"authorization": f"Bearer admin-guess-{n:04d}"}
            statuses.append(client.get("/keys", headers=guess).status_code)
        throttled = client.get("/keys", headers=ADMIN)  # not even the right token, from here
    assert statuses[:LIMIT] == [401] * LIMIT
    assert set(statuses[LIMIT:]) == {429}
    assert throttled.status_code == 429
    body = throttled.json()["error"]
    assert body["code"] == "too_many_failed_authentications"
    assert int(throttled.headers["retry-after"]) >= 1
    denied = [r for r in caplog.records if getattr(r, "action", None) == "denied"]
    assert len(denied) == LIMIT  # one audit line per counted guess, none once throttled
    assert not any("admin-guess" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("refusal", ["revoked", "disabled", "expired"])
def test_a_known_refused_key_looping_locks_out_nobody(gateway, caplog, refusal):
    caplog.set_level(logging.INFO, logger="app.access")
    created = create_key(gateway.url, name=f"leaked-{refusal}")
    if refusal == "revoked":
        admin(gateway.url, "DELETE", f"/keys/{created['id']}")
    elif refusal == "disabled":
        admin(gateway.url, "PATCH", f"/keys/{created['id']}", json={"disabled": True})
    else:
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        admin(gateway.url, "PATCH", f"/keys/{created['id']}", json={"expires_at": past})
    other = create_key(gateway.url, name="colleague")
    answers = [embed(gateway.url, created["key"], MODEL) for _ in range(6 * LIMIT)]
    assert {a.status_code for a in answers} == {401}
    assert {a.json()["error"]["code"] for a in answers} == {f"api_key_{refusal}"}
    # Every other key behind the same IP (a NAT, an office) still works.
    assert embed(gateway.url, other["key"], MODEL).status_code == 200
    assert embed(gateway.url, CLIENT_KEY, MODEL).status_code == 200
    refused = [
        r for r in caplog.records if r.name == "app.access" and getattr(r, "status", 0) == 401
    ]
    assert len(refused) >= 6 * LIMIT
    assert {getattr(r, "key_id", None) for r in refused} == {created["id"]}


def test_unknown_keys_from_one_ip_are_still_throttled(gateway):
    statuses = [embed(gateway.url, f"egw-guess-{n:04d}", MODEL).status_code for n in range(8)]
    assert statuses[:LIMIT] == [401] * LIMIT and set(statuses[LIMIT:]) == {429}
