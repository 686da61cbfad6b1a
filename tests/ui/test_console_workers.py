"""The console with two workers sharing Redis, as `embeddings-gateway` runs it: a session signed
on one worker is good on the other, and a sign-out ends a copied cookie on both."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.ui.session import COOKIE
from tests.console_support import PRICED, console_registry
from tests.harness import GatewayProcess
from tests.keys_support import ADMIN_TOKEN, create_key, embed, wait_until

WORKERS = 2
PID = re.compile(r"worker pid (\d+)")


@pytest.fixture
def two_workers(tmp_path, nanogpt, aiml, nugen, redis_server) -> Iterator[GatewayProcess]:
    tag = uuid.uuid4().hex[:8]
    env = {
        "MODELS_CONFIG": str(console_registry(tmp_path, nanogpt, aiml, nugen)),
        "WORKERS": str(WORKERS),
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_API_KEYS": "",
        "GATEWAY_INTERNAL_TOKEN": "",
        "REDIS_URL": redis_server.url,
        "KEYS_KEY_PREFIX": f"keys:{tag}:",
        "RATE_LIMIT_KEY_PREFIX": f"rl:{tag}:",
        "USAGE_KEY_PREFIX": f"usage:{tag}:",
        "RATE_LIMIT_PER_SECOND": "0",
        "LOG_LEVEL": "info",
    }
    gateway = GatewayProcess(env).start()
    deadline = time.monotonic() + 30
    while gateway.output().count("managed keys in") < WORKERS:
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    try:
        yield gateway
    finally:
        gateway.stop()


def fresh(gateway: GatewayProcess, method: str, path: str, cookie: str, **kw) -> httpx.Response:
    # A new connection each time, so requests land on either worker.
    return httpx.request(
        method,
        f"{gateway.url}{path}",
        cookies={COOKIE: cookie},
        headers={"connection": "close"},
        timeout=10,
        **kw,
    )


def test_sessions_hold_across_workers_and_sign_out_ends_them_on_all(two_workers):
    login = httpx.post(f"{two_workers.url}/ui/login", data={"token": ADMIN_TOKEN}, timeout=10)
    assert login.status_code == 303
    cookie = login.cookies[COOKIE]
    pids: set[str] = set()
    for _ in range(200):
        page = fresh(two_workers, "GET", "/ui/routes", cookie)
        assert page.status_code == 200
        pids.add(PID.search(page.text).group(1))  # type: ignore[union-attr]
        if len(pids) == WORKERS:
            break
    assert len(pids) == WORKERS  # one signature, checked by each worker alone

    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    out = fresh(two_workers, "POST", "/ui/logout", cookie, data={"csrf": csrf})
    assert out.status_code == 303
    # The copied cookie is refused by every worker (the ended session id is in Redis).
    replays = [fresh(two_workers, "GET", "/ui/routes", cookie) for _ in range(20)]
    assert [r.status_code for r in replays] == [303] * 20
    assert ADMIN_TOKEN not in two_workers.output()


def test_overview_sums_every_worker_through_redis(two_workers):
    key = create_key(two_workers.url, name="overview-sum")
    count = 0
    for n in range(200):
        assert embed(two_workers.url, key["key"], PRICED, f"sum {n}").status_code == 200
        count += 1
        if count >= 10 and len(_pids_serving(two_workers, key["id"])) == WORKERS:
            break
    assert len(_pids_serving(two_workers, key["id"])) == WORKERS
    login = httpx.post(f"{two_workers.url}/ui/login", data={"token": ADMIN_TOKEN}, timeout=10)
    cookie = login.cookies[COOKIE]

    def shows_all() -> bool:
        page = fresh(two_workers, "GET", "/ui", cookie).text
        return f'{PRICED} <span class="count">{count} requests</span>' in page

    wait_until(shows_all, timeout=10, step=0.5)  # each worker flushes within 2 s
    assert "summed over" in fresh(two_workers, "GET", "/ui", cookie).text


def _pids_serving(gateway: GatewayProcess, key_id: str) -> set[int]:
    time.sleep(0.01)  # let the access line reach the log
    return {
        json.loads(line)["pid"]
        for line in gateway.output().splitlines()
        if '"app.access"' in line and key_id in line and '"status":200' in line
    }
