"""The console in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser build), against a real gateway and the OpenAI SDK.

One whole path: sign in; create a key; call the API with it through the SDK; see the request on
Overview and its spend on Usage; revoke it; the next SDK call gets a 401. Plus an XSS check, the
CSP and cookie flags, CSRF from inside the page, and sign-out. Each page's screenshot goes to
docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from app.ui.session import COOKIE
from app.ui.web import CSP
from tests.console_support import FAILOVER, MODEL, PRICED, console_gateway, console_registry
from tests.harness import ROOT, ThreadedGateway
from tests.keys_support import ADMIN_TOKEN, wait_until

CHROMIUM = "/usr/bin/chromium"
# The README's pictures are rewritten only when asked (UPDATE_SCREENSHOTS=1 make test); every
# other run still takes them, into a scratch directory, so a working tree stays clean.
SCREENSHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "egw-console-screenshots"
)
XSS_NAME = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # A missing browser must fail the suite, never skip it: `make test` installs it.
    assert shutil.which("chromium") or Path(CHROMIUM).exists(), "make test installs chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory, nanogpt, aiml, nugen) -> Iterator[ThreadedGateway]:
    directory = tmp_path_factory.mktemp("console-browser")
    registry = console_registry(directory, nanogpt, aiml, nugen)
    with console_gateway(registry, directory / "keys.db") as server:
        yield server


class Watched:
    """A page whose dialogs and CSP violations are recorded: none may happen by accident."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.alerts: list[str] = []
        self.violations: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)

    def _dialog(self, dialog: Dialog) -> None:
        if dialog.type == "confirm":  # the revoke button asks first
            dialog.accept()
            return
        self.alerts.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message) -> None:  # type: ignore[no-untyped-def]
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/ui")
    assert page.url == f"{base}/ui/login"  # no session: the sign-in page
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui")


def sdk(gateway: ThreadedGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def test_the_whole_path_in_a_browser(browser: Browser, console: ThreadedGateway):
    base = console.url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    watched = Watched(context.new_page())
    page = watched.page

    page.goto(f"{base}/ui/login")
    shot(page, "login")
    sign_in(page, base)

    # The session cookie: HttpOnly (no script can read it), SameSite=Strict, with an expiry.
    (cookie,) = [c for c in context.cookies() if c["name"] == COOKIE]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain HTTP on loopback; Secure behind HTTPS
    assert time.time() + 3600 < cookie["expires"] <= time.time() + 8 * 3600 + 60
    assert cookie["path"] == "/ui"
    assert page.evaluate("document.cookie") == ""
    assert ADMIN_TOKEN not in page.content()
    assert ADMIN_TOKEN not in cookie["value"]

    # Create a key; its secret is shown once, with a copy button.
    page.goto(f"{base}/ui/keys")
    page.fill("#create-key input[name=name]", "browser-e2e")
    page.fill("#create-key input[name=team]", "search")
    page.fill("#create-key textarea[name=metadata]", "owner=ana@example.com")
    page.click("#create-key button[type=submit]")
    secret = page.text_content("#secret")
    assert secret is not None and secret.startswith("egw-")
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.click("button.copy")
    page.wait_for_function("document.querySelector('button.copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    key_path = page.get_attribute("#key-link", "href")
    assert key_path is not None
    key_id = key_path.rsplit("/", 1)[1]

    # The SDK uses it, and the request shows on Overview and its spend on Usage.
    client = sdk(console, secret)
    response = client.embeddings.create(model=PRICED, input="hello from the browser test")
    assert len(response.data[0].embedding) == 16
    for n in range(5):
        client.embeddings.create(model=MODEL, input=f"more traffic {n}")
    client.embeddings.create(model=FAILOVER, input="first route is down")

    page.goto(f"{base}/ui")
    section = page.locator("section.model-traffic", has_text=PRICED)
    assert "1 request" in section.inner_text()
    assert section.locator("svg.chart").count() == 3
    unserved = page.locator("tr", has_text="keyless-model").inner_text()
    assert "no provider key: set NANOGPT_API_KEY" in unserved  # not served, and why
    shot(page, "overview")

    page.goto(f"{base}/ui/usage?group_by=key")
    row = page.locator("#usage tbody tr", has_text=key_id)
    assert row.count() == 1
    assert "browser-e2e" in row.inner_text()
    cost = float(row.locator("td.cost").inner_text())
    assert cost > 0  # $1 per thousand tokens
    assert page.locator("svg.chart").count() == 1
    with page.expect_download() as download:
        page.click("#csv")
    assert key_id in Path(download.value.path()).read_text()
    shot(page, "usage")

    page.goto(f"{base}/ui/routes")
    down = page.locator("tr", has_text="down").first
    assert "connection failed" in down.inner_text()
    shot(page, "routes")

    page.goto(f"{base}/ui/playground")
    page.select_option("select[name=model]", MODEL)
    page.fill("textarea[name=text_a]", "The cat sat on the mat.")
    page.fill("textarea[name=text_b]", "A cat was sitting on a rug.")
    page.click("#playground button[type=submit]")
    assert page.text_content("#dims") == "16"
    cosine = float(page.text_content("#cosine") or "nan")
    assert -1.0 <= cosine <= 1.0
    shot(page, "playground")

    # Revoke it in the console (the page asks first); the next SDK call gets a 401.
    page.goto(f"{base}{key_path}")
    shot(page, "key")
    page.click("#revoke")
    page.wait_for_selector("text=revoked")

    def refused() -> bool:
        try:
            client.embeddings.create(model=PRICED, input="after revoke")
        except openai.AuthenticationError as exc:
            assert exc.status_code == 401
            return True
        return False

    wait_until(refused)
    page.goto(f"{base}/ui/keys")
    shot(page, "keys")
    assert watched.alerts == []
    assert watched.violations == []
    context.close()


def test_a_hostile_key_name_is_shown_as_text(browser: Browser, console: ThreadedGateway):
    base = console.url
    context = browser.new_context()
    watched = Watched(context.new_page())
    page = watched.page
    sign_in(page, base)
    page.goto(f"{base}/ui/keys")
    page.fill("#create-key input[name=name]", XSS_NAME)
    page.fill("#create-key input[name=team]", "<b>team</b>")
    page.click("#create-key button[type=submit]")
    page.goto(f"{base}/ui/keys")
    names = [cell.inner_text() for cell in page.locator("td.key-name").all()]
    assert XSS_NAME in names  # the very text, not an element
    assert page.locator("main img").count() == 0
    assert page.locator("td b").count() == 0
    page.goto(f"{base}/ui/usage?group_by=team")
    page.wait_for_timeout(200)  # an onerror handler would have fired by now
    assert watched.alerts == []
    context.close()


def test_csp_csrf_and_sign_out_in_a_browser(browser: Browser, console: ThreadedGateway):
    base = console.url
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, base)
    response = page.goto(f"{base}/ui/keys")
    assert response is not None
    headers = response.headers
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"

    # An inline script is refused by the policy, even one the page itself tries to add.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.ran = true'; document.body.appendChild(s); }"
    )
    assert page.evaluate("window.ran === undefined")

    # A state-changing POST with the session cookie but without the form's token: refused.
    status = page.evaluate(
        """() => fetch('/ui/keys', {method: 'POST', body: 'name=csrf-probe',
             headers: {'content-type': 'application/x-www-form-urlencoded'}})
             .then(r => r.status)"""
    )
    assert status == 403
    assert "csrf-probe" not in page.goto(f"{base}/ui/keys").text()  # type: ignore[union-attr]

    # Sign out: the cookie is gone and the pages ask for the token again.
    page.click("header .signout button")
    page.wait_for_url(f"{base}/ui/login")
    assert [c for c in context.cookies() if c["name"] == COOKIE] == []
    page.goto(f"{base}/ui/keys")
    assert page.url == f"{base}/ui/login"
    context.close()


def test_a_sign_in_form_on_another_site_is_refused(browser: Browser, console: ThreadedGateway):
    """Another site's page posts the right token to /ui/login: refused (403), no session; the
    console's own form sends its real origin (not `null`, as it did under `no-referrer`)."""
    base = console.url
    context = browser.new_context()
    page = context.new_page()
    sent: list[dict[str, str]] = []
    page.on(
        "request",
        lambda r: (
            sent.append(r.all_headers())
            if r.url == f"{base}/ui/login" and r.method == "POST"
            else None
        ),
    )
    sign_in(page, base)
    assert sent[-1]["origin"] == base and sent[-1]["sec-fetch-site"] == "same-origin"
    context.clear_cookies()

    form = (
        f'<form method="post" action="{base}/ui/login">'
        f'<input name="token" value="{ADMIN_TOKEN}"></form>'
        "<script>document.forms[0].submit()</script>"
    )
    page.route(
        "http://evil.test/", lambda route: route.fulfill(body=form, content_type="text/html")
    )
    with page.expect_response(f"{base}/ui/login") as answer:
        page.goto("http://evil.test/")
    assert answer.value.status == 403
    assert sent[-1]["origin"] == "http://evil.test"
    assert "Sign in from the console's own page." in page.content()
    assert [c for c in context.cookies() if c["name"] == COOKIE] == []
    context.close()
