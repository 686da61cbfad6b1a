"""The console with its Redis paused (SIGSTOP of a real redis-server: connections open, nothing
answers): every page answers within its bound, with a 503 that says why, and a session signed
out elsewhere does not come back to life meanwhile. Once Redis resumes, all is as before."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.ui.session import CHECK_TIMEOUT_SECONDS, COOKIE
from tests.conftest import CLIENT_KEY
from tests.console_support import console_gateway, csrf_of, signed_in
from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN_TOKEN
from tests.redis_server import RedisServer
from tests.ui.test_console import PAGES, registry

__all__ = ["registry"]  # the console tests' registry, over the session's fake upstreams

# What a page may take with Redis paused: the session check's bound, and slack for a busy
# machine. Without the bound a page waited as long as Redis was paused.
BOUND = CHECK_TIMEOUT_SECONDS + 2.0


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:  # its own: pausing the session's would stall other tests
        yield server


@pytest.fixture
def two_consoles(registry, tmp_path, redis) -> Iterator[tuple[ThreadedGateway, ThreadedGateway]]:
    """Two gateways sharing Redis, as two replicas: a sign-out on one is seen by the other only
    through Redis."""
    shared = {
        "REDIS_URL": redis.url,
        "RATE_LIMIT_KEY_PREFIX": f"rl:{uuid.uuid4().hex[:8]}:",
        "GATEWAY_API_KEYS": CLIENT_KEY,
    }
    with (
        console_gateway(registry, tmp_path / "a.db", **shared) as a,
        console_gateway(registry, tmp_path / "b.db", **shared) as b,
    ):
        yield a, b


def timed(method: str, url: str, cookie: str | None = None, **kw) -> tuple[int, float]:
    cookies = {COOKIE: cookie} if cookie else None
    began = time.monotonic()
    response = httpx.request(method, url, cookies=cookies, timeout=30, **kw)
    return response.status_code, time.monotonic() - began


def test_a_paused_redis_bounds_every_page_and_revives_no_session(two_consoles, redis):
    a, b = two_consoles
    ended = signed_in(a.url)
    ended_cookie = ended.cookies[COOKIE]
    assert ended.post("/ui/logout", data={"csrf": csrf_of(ended)}).status_code == 303
    live = signed_in(b.url)
    live_cookie, live_csrf = live.cookies[COOKIE], csrf_of(live)

    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        answers = {
            (method, path, who): timed(method, f"{b.url}{path}", cookie, data=data)
            for method, path, data in [
                *[("GET", path, None) for path in [*PAGES, "/ui/usage.csv", "/ui/keys/key_x"]],
                ("POST", "/ui/playground", {"csrf": live_csrf, "model": "m", "text_a": "x"}),
                ("POST", "/ui/keys", {"csrf": live_csrf, "name": "while-paused"}),
                ("POST", "/ui/logout", {"csrf": live_csrf}),
            ]
            for who, cookie in [("live", live_cookie), ("signed out on A", ended_cookie)]
        }
        login_page = httpx.get(f"{b.url}/ui/login", cookies={COOKIE: live_cookie}, timeout=30)
        wrong = timed("POST", f"{b.url}/ui/login", data={"token": "wrong"})
        right = timed("POST", f"{b.url}/ui/login", data={"token": ADMIN_TOKEN})
        api = httpx.get(f"{b.url}/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)

    slow = {where: took for where, (_, took) in answers.items() if took > BOUND}
    assert slow == {}
    # Neither session is let in: the one signed out on A must not come back to life.
    assert {status for status, _ in answers.values()} == {503}
    assert login_page.status_code == 503 and "Redis is not answering" in login_page.text
    assert login_page.headers["retry-after"] == "5"
    assert wrong[0] == 401 and wrong[1] < BOUND  # the throttle's own bound, failing open
    assert right[0] == 303 and right[1] < BOUND
    assert api.status_code == 200  # the API never reads console sessions

    # Redis answers again: the live session works, the ended one stays ended.
    assert timed("GET", f"{b.url}/ui/routes", live_cookie)[0] == 200
    assert timed("GET", f"{b.url}/ui/routes", ended_cookie)[0] == 303
