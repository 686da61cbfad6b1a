"""The console's sign-in over real sockets: a form posted from another site is refused (403)
before the failed-authentication throttle counts anything, so another site cannot lock an IP
out of the console and the API, nor sign a browser in. Same-origin and header-less (curl)
sign-ins work as before. The browser's view is in tests/system/test_console_browser.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.console_support import console_gateway
from tests.harness import ThreadedGateway
from tests.keys_support import ADMIN_TOKEN
from tests.ui.test_console import registry

__all__ = ["registry"]  # the console tests' registry, over the session's fake upstreams

LIMIT = 3  # failed sign-ins per minute per IP
ELSEWHERE = [
    {"origin": "https://evil.example"},
    {"origin": "null"},  # a sandboxed frame, a data: URL
    {"referer": "https://evil.example/page"},  # no Origin: the Referer decides
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site", "origin": "https://other.example.com"},
    {"origin": "http://127.0.0.1:1"},  # the same host on another port is another origin
]


@pytest.fixture
def gateway(registry, tmp_path) -> Iterator[ThreadedGateway]:
    with console_gateway(
        registry,
        tmp_path / "keys.db",
        AUTH_FAILURES_PER_MINUTE=LIMIT,
        GATEWAY_API_KEYS=CLIENT_KEY,
        TRUSTED_PROXIES="10.0.0.0/8",  # not the test's 127.0.0.1: its X-Forwarded-* are ignored
    ) as server:
        yield server


def sign_in(gateway: ThreadedGateway, token: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/ui/login", data={"token": token}, headers=headers, timeout=10)


def test_cross_site_posts_are_refused_before_anything_is_counted(gateway):
    refused = [sign_in(gateway, f"guess-{n}", **ELSEWHERE[n % len(ELSEWHERE)]) for n in range(31)]
    assert [r.status_code for r in refused] == [403] * 31
    assert "Sign in from the console&#39;s own page." in refused[0].text
    assert all("set-cookie" not in r.headers for r in refused)
    # The right token from another site is refused too: no signing a browser in from there.
    assert sign_in(gateway, ADMIN_TOKEN, origin="https://evil.example").status_code == 403

    # Nothing was counted: the API still answers this IP, and sign-in works from here.
    api = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert api.status_code == 200
    own = sign_in(gateway, ADMIN_TOKEN, origin=gateway.url)
    assert own.status_code == 303 and "egw_console=" in own.headers["set-cookie"]
    # And the throttle still counts real guesses from the console's own page, and from curl.
    guesses = [sign_in(gateway, "wrong", origin=gateway.url).status_code for _ in range(LIMIT)]
    assert guesses == [401] * LIMIT
    assert sign_in(gateway, "wrong").status_code == 429  # blocked, curl or not
    assert sign_in(gateway, ADMIN_TOKEN).status_code == 429


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, a script
        {"origin": "{url}"},
        {"referer": "{url}/ui/login"},
        {"origin": "{url}", "sec-fetch-site": "same-origin"},
        # A proxy that rewrote Host: the browser's own Sec-Fetch-Site vouches for the page.
        {"origin": "https://console.example.com", "sec-fetch-site": "same-origin"},
    ],
)
def test_same_origin_and_header_less_sign_ins_work(gateway, headers):
    headers = {name: value.format(url=gateway.url) for name, value in headers.items()}
    response = sign_in(gateway, ADMIN_TOKEN, **headers)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui"


def test_x_forwarded_host_names_the_origin_only_from_a_trusted_proxy(registry, tmp_path, gateway):
    behind_proxy = {
        "origin": "https://console.example.com",
        "x-forwarded-host": "console.example.com",
    }
    assert sign_in(gateway, ADMIN_TOKEN, **behind_proxy).status_code == 403  # peer not trusted
    with console_gateway(registry, tmp_path / "k.db", TRUSTED_PROXIES="127.0.0.1/32") as trusted:
        assert sign_in(trusted, ADMIN_TOKEN, **behind_proxy).status_code == 303
        behind_proxy["x-forwarded-host"] = "evil.example"
        assert sign_in(trusted, ADMIN_TOKEN, **behind_proxy).status_code == 403
