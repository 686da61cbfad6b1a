"""The console at /ui over real sockets with httpx: enabling, sessions, CSRF, headers, throttled
sign-in, and that its key forms go through the admin API's rules. The browser tests are in
tests/system/test_console_browser.py."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from itsdangerous import TimestampSigner

from app.ui.session import COOKIE, Sessions
from app.ui.stats import RollingStats
from app.ui.web import CSP
from tests.console_support import (
    MODEL,
    PRICED,
    console_gateway,
    console_registry,
    csrf_of,
    signed_in,
)
from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN_TOKEN, admin, create_key, wait_until

PAGES = ["/ui", "/ui/routes", "/ui/keys", "/ui/usage", "/ui/playground"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, nanogpt, aiml, nugen):
    return console_registry(tmp_path_factory.mktemp("console"), nanogpt, aiml, nugen)


@pytest.fixture(scope="module")
def console(registry, tmp_path_factory) -> Iterator[ThreadedGateway]:
    keys_db = tmp_path_factory.mktemp("console-keys") / "keys.db"
    with console_gateway(
        registry, keys_db, AUTH_FAILURES_PER_MINUTE=1000, TRUSTED_PROXIES="10.0.0.0/8"
    ) as server:
        yield server


def test_without_an_admin_token_there_is_no_console(gateway):
    for path in ["/ui", "/ui/login", "/ui/keys", "/ui/static/console.js"]:
        response = httpx.get(f"{gateway.url}{path}")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"


def test_every_page_needs_a_session(console):
    for path in [*PAGES, "/ui/usage.csv", "/ui/keys/key_x"]:
        response = httpx.get(f"{console.url}{path}")
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login"
    for path in ["/ui/keys", "/ui/keys/key_x/revoke", "/ui/playground", "/ui/logout"]:
        response = httpx.post(f"{console.url}{path}", data={"csrf": "x"})
        assert response.status_code == 401, path


def test_sign_in_sets_a_strict_http_only_cookie_holding_no_token(console):
    response = httpx.post(f"{console.url}/ui/login", data={"token": ADMIN_TOKEN})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "max-age=28800" in cookie.lower()  # CONSOLE_SESSION_SECONDS' default
    assert "secure" not in attributes  # plain HTTP on loopback
    assert ADMIN_TOKEN not in cookie


def test_the_cookie_is_secure_behind_a_trusted_https_proxy(console):
    # The socket peer is 127.0.0.1, not in TRUSTED_PROXIES: its header is not believed.
    plain = httpx.post(
        f"{console.url}/ui/login",
        data={"token": ADMIN_TOKEN},
        headers={"x-forwarded-proto": "https"},
    )
    assert "secure" not in plain.headers["set-cookie"].lower()


def test_secure_cookie_when_the_proxy_is_trusted(registry, tmp_path):
    with console_gateway(registry, tmp_path / "k.db", TRUSTED_PROXIES="127.0.0.1/32") as server:
        response = httpx.post(
            f"{server.url}/ui/login",
            data={"token": ADMIN_TOKEN},
            headers={"x-forwarded-proto": "https"},
        )
        assert response.status_code == 303
        assert "; secure" in response.headers["set-cookie"].lower()


def test_a_wrong_token_is_refused_and_never_echoed(console):
    response = httpx.post(f"{console.url}/ui/login", data={"token": "guess-" + ADMIN_TOKEN})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "guess-" not in response.text


def test_sign_in_is_throttled_per_ip(registry, tmp_path):
    with console_gateway(registry, tmp_path / "k.db", AUTH_FAILURES_PER_MINUTE=3) as server:
        codes = [
            httpx.post(f"{server.url}/ui/login", data={"token": f"wrong-{n}"}).status_code
            for n in range(4)
        ]
        assert codes[:2] == [401, 401]
        assert 429 in codes
        # Blocked: even the right token is not looked at.
        right = httpx.post(f"{server.url}/ui/login", data={"token": ADMIN_TOKEN})
        assert right.status_code == 429
        assert "set-cookie" not in right.headers


def test_the_console_is_not_counted_as_api_traffic(registry, tmp_path):
    with console_gateway(registry, tmp_path / "k.db", RATE_LIMIT_PER_SECOND=2) as server:
        client = signed_in(server.url)
        responses = [client.get("/ui/keys") for _ in range(6)]  # 3x the per-IP limit of 2/s
        assert [r.status_code for r in responses] == [200] * 6
        assert all("x-ratelimit-limit-requests" not in r.headers for r in responses)
        api = [httpx.get(f"{server.url}/v1/models").status_code for _ in range(4)]
        assert 429 in api  # while the API itself is limited


def test_pages_carry_the_security_headers(console):
    client = signed_in(console.url)
    anonymous = httpx.Client(base_url=console.url)
    for path in [*PAGES, "/ui/login", "/ui/static/console.js", "/ui/static/console.css"]:
        response = (anonymous if path == "/ui/login" else client).get(path)
        assert response.status_code == 200, path
        headers = response.headers
        assert headers["content-security-policy"] == CSP
        assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
        assert "unsafe-inline" not in CSP
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert ADMIN_TOKEN not in response.text
    assert "<script>" not in client.get("/ui").text  # no inline script anywhere


def test_a_post_without_the_csrf_token_is_refused(console):
    client = signed_in(console.url)
    for form in [{"name": "no-csrf"}, {"name": "no-csrf", "csrf": "forged"}]:
        response = client.post("/ui/keys", data=form)
        assert response.status_code == 403
    listed = admin(console.url, "GET", "/keys", params={"name": "no-csrf"}).json()["data"]
    assert listed == []
    # Another session's token is not this session's.
    other = csrf_of(signed_in(console.url))
    assert client.post("/ui/keys", data={"name": "no-csrf", "csrf": other}).status_code == 403


def test_key_forms_follow_the_admin_api_rules(console):
    client = signed_in(console.url)
    csrf = csrf_of(client)
    bad = {"name": "bad", "rate_limit_per_second": "0", "csrf": csrf}
    api = admin(console.url, "POST", "/keys", json={"name": "bad", "rate_limit_per_second": 0})
    assert api.status_code == 400
    page = client.post("/ui/keys", data=bad)
    assert page.status_code == 400
    assert api.json()["error"]["message"] in page.text
    unknown = client.post("/ui/keys", data={"name": "x", "models": "nope", "csrf": csrf})
    assert unknown.status_code == 400
    assert "models[0]: the model &#39;nope&#39; is not in the registry." in unknown.text


def test_create_edit_rotate_disable_and_revoke_through_the_console(console):
    client = signed_in(console.url)
    csrf = csrf_of(client)
    created = client.post(
        "/ui/keys",
        data={"name": "ops", "team": "search", "models": PRICED, "metadata": "owner=ana",
              "budget_usd": "5", "budget_period": "month", "csrf": csrf},
    )  # fmt: skip
    assert created.status_code == 200
    secret = created.text.split('<code id="secret">')[1].split("</code>")[0]
    assert secret.startswith("egw-")
    listed = admin(console.url, "GET", "/keys", params={"name": "ops"}).json()["data"]
    assert len(listed) == 1
    key = listed[0]
    assert (key["team"], key["models"], key["metadata"]) == ("search", [PRICED], {"owner": "ana"})
    assert (key["budget_usd"], key["budget_period"]) == (5, "month")
    assert secret not in client.get(f"/ui/keys/{key['id']}").text  # shown once only

    filtered = client.get("/ui/keys", params={"team": "search"}).text
    assert key["id"] in filtered
    assert key["id"] not in client.get("/ui/keys", params={"team": "nobody"}).text

    edit = client.post(
        f"/ui/keys/{key['id']}/edit",
        data={"name": "ops", "team": "search", "models": "", "rate_limit_per_second": "7",
              "tokens_per_minute": "", "budget_usd": "", "budget_period": "total",
              "expires_at": "", "metadata": "", "csrf": csrf},
    )  # fmt: skip
    assert edit.status_code == 303
    shown = admin(console.url, "GET", f"/keys/{key['id']}").json()
    assert shown["rate_limit_per_second"] == 7
    assert shown["models"] is None and shown["budget_usd"] is None and shown["metadata"] == {}

    sdk = openai.OpenAI(base_url=f"{console.url}/v1", api_key=secret, max_retries=0)
    assert len(sdk.embeddings.create(model=PRICED, input="hi").data) == 1

    rotated = client.post(f"/ui/keys/{key['id']}/rotate", data={"csrf": csrf})
    assert rotated.status_code == 200
    new_secret = rotated.text.split('<code id="secret">')[1].split("</code>")[0]
    assert new_secret != secret
    new_sdk = openai.OpenAI(base_url=f"{console.url}/v1", api_key=new_secret, max_retries=0)
    wait_until(lambda: _refused(sdk))
    assert len(new_sdk.embeddings.create(model=PRICED, input="hi").data) == 1

    disable = client.post(f"/ui/keys/{key['id']}/disable", data={"csrf": csrf})
    assert disable.status_code == 303
    assert admin(console.url, "GET", f"/keys/{key['id']}").json()["disabled"] is True
    client.post(f"/ui/keys/{key['id']}/enable", data={"csrf": csrf})
    assert admin(console.url, "GET", f"/keys/{key['id']}").json()["disabled"] is False

    revoke = client.post(f"/ui/keys/{key['id']}/revoke", data={"csrf": csrf})
    assert revoke.status_code == 303
    wait_until(lambda: _refused(new_sdk))
    assert "revoked" in client.get(f"/ui/keys/{key['id']}").text


def _refused(sdk: openai.OpenAI) -> bool:
    try:
        sdk.embeddings.create(model=PRICED, input="hi")
    except openai.AuthenticationError:
        return True
    return False


def test_usage_page_and_csv_show_spend_per_day(console):
    key = create_key(console.url, name="usage-csv", team="billing")
    sdk = openai.OpenAI(base_url=f"{console.url}/v1", api_key=key["key"], max_retries=0)
    sdk.embeddings.create(model=PRICED, input="count me")
    client = signed_in(console.url)
    page = client.get("/ui/usage", params={"group_by": "key"})
    assert page.status_code == 200
    assert key["id"] in page.text and "usage-csv" in page.text
    by_team = client.get("/ui/usage", params={"group_by": "team"}).text
    assert "billing" in by_team
    download = client.get("/ui/usage.csv", params={"group_by": "key"})
    assert download.headers["content-type"].startswith("text/csv")
    assert "attachment" in download.headers["content-disposition"]
    rows = [r for r in csv.DictReader(io.StringIO(download.text)) if r["group"] == key["id"]]
    assert len(rows) == 1
    assert int(rows[0]["requests"]) == 1 and float(rows[0]["cost_usd"]) > 0
    formula = create_key(console.url, name="=HYPERLINK(1)")
    openai.OpenAI(
        base_url=f"{console.url}/v1", api_key=formula["key"], max_retries=0
    ).embeddings.create(model=PRICED, input="formula")
    again = client.get("/ui/usage.csv", params={"group_by": "key"}).text
    (quoted,) = [r for r in csv.DictReader(io.StringIO(again)) if r["group"] == formula["id"]]
    assert quoted["name"] == "'=HYPERLINK(1)"  # text in a spreadsheet, not a formula
    bad = client.get("/ui/usage.csv", params={"start": "2026-02-01", "end": "2026-01-01"})
    assert bad.status_code == 400


def test_playground_embeds_and_compares_two_texts(console):
    client = signed_in(console.url)
    csrf = csrf_of(client, "/ui/playground")
    page = client.post(
        "/ui/playground",
        data={"model": MODEL, "text_a": "a cat", "text_b": "a cat", "csrf": csrf},
    )
    assert page.status_code == 200, page.text
    assert '<td id="dims">16</td>' in page.text
    assert '<td id="cosine">1.0000</td>' in page.text  # the same text: the same vector
    unknown = client.post("/ui/playground", data={"model": "nope", "text_a": "x", "csrf": csrf})
    assert unknown.status_code == 400


def test_sign_out_ends_the_session_even_for_a_copied_cookie(console):
    client = signed_in(console.url)
    copied = client.cookies[COOKIE]
    csrf = csrf_of(client)
    out = client.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert f'{COOKIE}=""' in out.headers["set-cookie"] or "max-age=0" in (
        out.headers["set-cookie"].lower()
    )
    replay = httpx.get(f"{console.url}/ui/keys", cookies={COOKIE: copied})
    assert replay.status_code == 303 and replay.headers["location"] == "/ui/login"


def test_a_cookie_signed_under_another_admin_token_is_refused(console):
    cookie, _ = Sessions("another-admin-token", 3600).issue()
    response = httpx.get(f"{console.url}/ui/keys", cookies={COOKIE: cookie})
    assert response.status_code == 303


async def test_an_expired_session_is_refused(monkeypatch):
    sessions = Sessions(ADMIN_TOKEN, 60)
    cookie, _ = sessions.issue()
    assert await sessions.read(cookie) is not None
    with monkeypatch.context() as m:  # signed 61 s ago
        m.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 61)
        stale, _ = sessions.issue()
    assert await sessions.read(stale) is None
    assert await sessions.read(cookie[:-2] + "xx") is None


def test_the_admin_token_never_reaches_a_log_line(registry, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG), console_gateway(registry, tmp_path / "k.db") as server:
        client = signed_in(server.url)
        for path in PAGES:
            client.get(path)
        httpx.post(f"{server.url}/ui/login", data={"token": "x" + ADMIN_TOKEN})
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "console sign-in" in text
    assert ADMIN_TOKEN not in text


def test_rolling_stats_keep_one_hour_per_minute():
    now = [1_000_000.0 * 60]
    stats = RollingStats(clock=lambda: now[0])
    for n in range(100):
        stats.observe("m", 200 if n < 98 else 502, 0.010 if n < 90 else 0.500)
    stats.observe("other", 200, 0.001)
    series = {s.model: s for s in stats.last_hour()}
    m = series["m"]
    assert m.total_requests == 100
    assert m.error_rate[-1] == pytest.approx(0.02)
    assert 10 <= m.p50_ms[-1] <= 12  # type: ignore[operator]
    assert 500 <= m.p99_ms[-1] <= 600  # type: ignore[operator]
    assert m.error_rate[0] is None  # no traffic an hour ago
    now[0] += 3600  # an hour later the minute has left the window
    stats.observe("other", 200, 0.001)
    assert [s.model for s in stats.last_hour()] == ["other"]


async def test_rolling_stats_are_summed_across_workers_through_redis(redis_server):
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url)
    now = [time.time()]
    prefix = f"stats:{time.monotonic_ns()}:"
    workers = [
        RollingStats(clock=lambda: now[0], redis=lambda: client, prefix=prefix) for _ in range(2)
    ]
    for n, stats in enumerate(workers):
        for _ in range(3 + n):
            stats.observe("m", 200, 0.010)
        stats.observe("m", 503, 0.900)
    await workers[0].flush()
    series, everywhere = await workers[1].last_hour_everywhere()  # flushes its own first
    assert everywhere is True
    (m,) = series
    assert m.total_requests == 9
    assert m.error_rate[-1] == pytest.approx(2 / 9)
    assert m.p99_ms[-1] >= 900  # type: ignore[operator]
    assert [s.total_requests for s in workers[0].last_hour()] == [4]  # its own view
    await client.aclose()
