"""What every console page shares: security headers, the session and CSRF gate, the sign-in
form's same-origin check, form parsing and rendering with autoescaped templates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ui.session import COOKIE, Session, Sessions, SessionUnchecked, csrf_matches

HERE = Path(__file__).parent
# No inline script or style anywhere: charts are SVG drawn with attributes, behaviour is in
# /ui/static/console.js. Nothing from another origin, and no page may frame the console.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # Not `no-referrer`: under it a browser sends `Origin: null` even on the console's own form
    # posts, and the sign-in's same-origin check could not tell them from a sandboxed frame's.
    # Nothing leaves the console either way: it links to no other origin.
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
MAX_FORM_BYTES = 64 * 1024

templates = Jinja2Templates(directory=str(HERE / "templates"))
assert templates.env.autoescape  # everything a user supplied is rendered as text


class SecureHeaders:
    """Pure ASGI: the console's security headers on every response, errors and files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() not in SECURITY_HEADERS
                ]
                raw.extend((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(slots=True)
class Context:
    """What a signed-in handler gets: the request, its session and its form (for a POST)."""

    request: Request
    session: Session
    form: dict[str, str]


Handler = Callable[[Context], Awaitable[Response]]


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (all the console sends); the last value of a repeated field wins."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def from_another_site(request: Request, trusted_proxy: bool) -> bool:
    """Was this POST sent by a browser from a page of another origin (a cross-site form)?

    `Sec-Fetch-Site`, which a browser writes itself and no page can set, decides when present:
    `same-origin` is the console's own page, whatever Host a proxy in front rewrote. Otherwise
    the `Origin` header (or, lacking it, `Referer`) must name the host the request was sent to:
    its Host header, or X-Forwarded-Host when the peer is a trusted proxy (`trusted_proxy`).
    A request with none of these is no browser's form (curl, a script) and is let through:
    CSRF needs a victim's browser, and a browser sends them.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site in ("cross-site", "same-site"):
        return True
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None or fetch_site == "same-origin":
        return False
    hosts = {_host(request.headers.get("host"), None)}
    forwarded = request.headers.get("x-forwarded-host")
    if trusted_proxy and forwarded:
        hosts.add(_host(forwarded.split(",")[0].strip(), None))
    origin = _url_host(claimed)  # None for `Origin: null` (a sandboxed frame, a data: URL)
    return origin is None or origin not in hosts


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _url_host(url: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS:
        return None
    return _host(parts.netloc.rpartition("@")[2], parts.scheme)


def _host(netloc: str | None, scheme: str | None) -> tuple[str, int | None] | None:
    """(host, port), the port None when it is the scheme's default; a Host header has no
    scheme (TLS may end at a proxy), so either default port counts as none."""
    if not netloc:
        return None
    try:
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if host is None:
        return None
    defaults = {_DEFAULT_PORTS[scheme]} if scheme else set(_DEFAULT_PORTS.values())
    return host, None if port in defaults else port


def signed_in(sessions: Callable[[], Sessions], handler: Handler) -> Callable[..., Any]:
    """Wrap a handler: no session → sign-in page (GET) or 401; a session Redis cannot vouch
    for → 503; a POST without the session's CSRF token → 403, before the handler runs."""

    async def endpoint(request: Request) -> Response:
        try:
            session = await sessions().read(request.cookies.get(COOKIE))
        except SessionUnchecked:
            return unchecked_page(request)
        if session is None:
            if request.method == "GET":
                return RedirectResponse("/ui/login", status_code=303)
            return message_page(request, "Sign in first.", status=401)
        form: dict[str, str] = {}
        if request.method == "POST":
            form = await read_form(request)
            if not csrf_matches(session, form.get("csrf")):
                return message_page(
                    request, "This form has expired or did not come from the console.", 403
                )
        return await handler(Context(request, session, form))

    return endpoint


def render(
    request: Request,
    template: str,
    session: Session | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"csrf": session.csrf if session else None, "path": request.url.path, **values},
        status_code=status,
    )


def message_page(request: Request, message: str, status: int) -> HTMLResponse:
    return render(request, "message.html", None, status=status, message=message)


UNCHECKED = (
    "The console cannot check sessions now: Redis is not answering, so it cannot tell whether "
    "this one was signed out. The gateway's API is not affected. Try again in a moment."
)


def unchecked_page(request: Request, *, sign_in: bool = False) -> HTMLResponse:
    """The 503 for a session check Redis did not answer (app/ui/session.py): a notice, or the
    sign-in page saying why signing in would not help yet."""
    if sign_in:
        response = render(request, "login.html", None, 503, error=UNCHECKED)
    else:
        response = message_page(request, UNCHECKED, 503)
    response.headers["retry-after"] = "5"
    return response
