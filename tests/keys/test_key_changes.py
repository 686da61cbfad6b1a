"""Key changes are atomic: with two workers answering admin calls sent at the same moment, on
both stores, a revoke is never undone by a PATCH or a rotation, a rotation racing a revoke
leaves neither secret working, and a disable is never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import GatewayProcess
from tests.keys.test_keys_workers import MODEL, gateway_env, started, store_env
from tests.keys_support import ADMIN, create_key

TRIES = 16  # per race and store: fresh keys, each with two calls, all sent at once


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gateway(request, registry_path, tmp_path_factory) -> Iterator[GatewayProcess]:
    env = store_env(request.param, request, tmp_path_factory.mktemp("changes"))
    # These races prove atomicity, not latency: on a busy 2-core machine a store call must not
    # time out into a 503 (which would leave a try unproven), so the store waits longer here.
    env.update(CACHE_TIMEOUT_MS="3000", KEYS_DB_TIMEOUT_MS="5000")
    with started(GatewayProcess(gateway_env(registry_path, env))) as gateway:
        yield gateway


async def _race(url: str, make: dict[str, Any], calls: list[tuple[str, str, Any]]) -> list[Any]:
    """TRIES fresh keys, then for each the `calls` (path relative to the key) sent at once
    with every other try's, each on its own connection (so either worker may take each).
    Returns each try's key and its answers."""
    headers = {**ADMIN, "connection": "close"}
    async with httpx.AsyncClient(base_url=f"{url}/admin/v1", headers=headers, timeout=20) as c:
        made = await asyncio.gather(*(c.post("/keys", json=make) for _ in range(TRIES)))
        keys = [m.json() for m in made]
        answers = await asyncio.gather(
            *(
                c.request(method, f"/keys/{key['id']}{path}", json=body)
                for key in keys
                for method, path, body in calls
            )
        )
    per_try = len(calls)
    return [(key, answers[n * per_try : (n + 1) * per_try]) for n, key in enumerate(keys)]


async def _statuses(url: str, secrets: list[str]) -> dict[str, set[int]]:
    """Each secret's statuses over 4 fresh-connection calls (enough to reach both workers),
    once every worker's lookup cache (KEYS_CACHE_SECONDS) has passed."""
    await asyncio.sleep(1.0)
    body = {"model": MODEL, "input": "after the race", "encoding_format": "float"}
    async with httpx.AsyncClient(base_url=url, timeout=20) as client:

        async def call(secret: str) -> int:
            headers = {"authorization": f"Bearer {secret}", "connection": "close"}
            return (await client.post("/v1/embeddings", json=body, headers=headers)).status_code

        found = await asyncio.gather(*(call(s) for s in secrets for _ in range(4)))
    return {s: set(found[n * 4 : (n + 1) * 4]) for n, s in enumerate(secrets)}


async def _shown(url: str, key_ids: list[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"{url}/admin/v1", headers=ADMIN, timeout=20) as c:
        return [r.json() for r in await asyncio.gather(*(c.get(f"/keys/{i}") for i in key_ids))]


async def test_a_revoke_racing_a_patch_is_never_undone(gateway):
    raced = await _race(
        gateway.url,
        {"name": "racing"},
        [("DELETE", "", None), ("PATCH", "", {"name": "patched", "disabled": False})],
    )
    for _, (revoked, patched) in raced:
        assert revoked.status_code == 200 and patched.status_code in (200, 400), patched.text
    shown = await _shown(gateway.url, [key["id"] for key, _ in raced])
    assert all(record["revoked_at"] is not None for record in shown)
    statuses = await _statuses(gateway.url, [key["key"] for key, _ in raced])
    assert set(map(frozenset, statuses.values())) == {frozenset({401})}


async def test_a_revoke_racing_a_rotation_leaves_neither_secret_working(gateway):
    raced = await _race(
        gateway.url,
        {"name": "rotating"},
        [("DELETE", "", None), ("POST", "/rotate", {"grace_seconds": 60})],
    )
    secrets = []
    for key, (revoked, rotated) in raced:
        assert revoked.status_code == 200 and rotated.status_code in (200, 400), rotated.text
        secrets.append(key["key"])
        if rotated.status_code == 200:
            secrets.append(rotated.json()["key"])
    statuses = await _statuses(gateway.url, secrets)
    assert set(map(frozenset, statuses.values())) == {frozenset({401})}
    print(f"\nrotations that won the race: {len(secrets) - TRIES}/{TRIES}")


async def test_a_disable_is_never_lost_to_a_concurrent_change(gateway):
    raced = await _race(
        gateway.url,
        {"name": "disabling"},
        [("PATCH", "", {"disabled": True}), ("PATCH", "", {"name": "renamed", "team": "t"})],
    )
    for _, answers in raced:
        assert [a.status_code for a in answers] == [200, 200]
    shown = await _shown(gateway.url, [key["id"] for key, _ in raced])
    assert {(record["disabled"], record["name"]) for record in shown} == {(True, "renamed")}
    statuses = await _statuses(gateway.url, [key["key"] for key, _ in raced])
    assert set(map(frozenset, statuses.values())) == {frozenset({401})}


def test_a_revoked_key_cannot_be_patched_or_rotated_back(gateway):
    created = create_key(gateway.url)
    base = f"{gateway.url}/admin/v1/keys/{created['id']}"
    assert httpx.delete(base, headers=ADMIN).status_code == 200
    patched = httpx.patch(base, headers=ADMIN, json={"disabled": False, "name": "back"})
    assert patched.status_code == 400 and patched.json()["error"]["param"] == "id"
    assert httpx.post(f"{base}/rotate", headers=ADMIN).status_code == 400
    again = httpx.delete(base, headers=ADMIN)  # revoking twice is fine, and changes nothing
    assert again.status_code == 200 and again.json()["revoked_at"] is not None
    assert httpx.get(base, headers=ADMIN).json()["name"] is None
