"""Key changes are atomic: with two workers answering admin calls sent at the same moment, on
both stores, a revoke is never undone by a PATCH or a rotation, a rotation racing a revoke
leaves neither secret working, and a disable is never lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import GatewayProcess
from tests.keys_support import ADMIN, create_key, embed
from tests.test_keys_workers import MODEL, gateway_env, started, store_env

TRIES = 10  # per race and store: each try is a fresh key and two calls sent together


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gateway(request, registry_path, tmp_path_factory) -> Iterator[GatewayProcess]:
    env = store_env(request.param, request, tmp_path_factory.mktemp("changes"))
    with started(GatewayProcess(gateway_env(registry_path, env))) as gateway:
        yield gateway


async def _together(url: str, *calls: tuple[str, str, dict[str, Any] | None]) -> list[int]:
    """Send the calls at once, each on its own connection (so either worker may take each)."""
    headers = {**ADMIN, "connection": "close"}
    async with httpx.AsyncClient(base_url=f"{url}/admin/v1", headers=headers, timeout=10) as c:
        answers = await asyncio.gather(
            *(c.request(method, path, json=body) for method, path, body in calls)
        )
    return [a.status_code for a in answers]


def _refused_everywhere(url: str, secret: str) -> set[int]:
    """Statuses of fresh-connection calls with `secret`, enough to reach both workers."""
    return {embed(url, secret, MODEL).status_code for _ in range(4)}


async def test_a_revoke_racing_a_patch_is_never_undone(gateway):
    keys = []
    for _ in range(TRIES):
        created = create_key(gateway.url, name="racing")
        statuses = await _together(
            gateway.url,
            ("DELETE", f"/keys/{created['id']}", None),
            ("PATCH", f"/keys/{created['id']}", {"name": "patched", "disabled": False}),
        )
        assert statuses[0] == 200 and statuses[1] in (200, 400), statuses
        keys.append(created)
    time.sleep(1.0)  # past KEYS_CACHE_SECONDS: every worker reads the store again
    for created in keys:
        shown = httpx.get(f"{gateway.url}/admin/v1/keys/{created['id']}", headers=ADMIN).json()
        assert shown["revoked_at"] is not None
        assert _refused_everywhere(gateway.url, created["key"]) == {401}


async def test_a_revoke_racing_a_rotation_leaves_neither_secret_working(gateway):
    outcomes = []
    for _ in range(TRIES):
        created = create_key(gateway.url, name="rotating")
        headers = {**ADMIN, "connection": "close"}
        async with httpx.AsyncClient(base_url=f"{gateway.url}/admin/v1", headers=headers) as c:
            revoked, rotated = await asyncio.gather(
                c.delete(f"/keys/{created['id']}"),
                c.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": 60}),
            )
        assert revoked.status_code == 200
        assert rotated.status_code in (200, 400), rotated.text
        new = rotated.json()["key"] if rotated.status_code == 200 else None
        outcomes.append((created["key"], new))
    time.sleep(1.0)
    for old, new in outcomes:
        assert _refused_everywhere(gateway.url, old) == {401}
        if new is not None:
            assert _refused_everywhere(gateway.url, new) == {401}
    print(f"\nrotations that won the race: {sum(new is not None for _, new in outcomes)}/{TRIES}")


async def test_a_disable_is_never_lost_to_a_concurrent_change(gateway):
    keys = []
    for n in range(TRIES):
        created = create_key(gateway.url, name="disabling")
        statuses = await _together(
            gateway.url,
            ("PATCH", f"/keys/{created['id']}", {"disabled": True}),
            ("PATCH", f"/keys/{created['id']}", {"name": f"renamed-{n}", "team": "t"}),
        )
        assert statuses == [200, 200]
        keys.append(created)
    time.sleep(1.0)
    for n, created in enumerate(keys):
        shown = httpx.get(f"{gateway.url}/admin/v1/keys/{created['id']}", headers=ADMIN).json()
        assert (shown["disabled"], shown["name"]) == (True, f"renamed-{n}")
        assert _refused_everywhere(gateway.url, created["key"]) == {401}


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
