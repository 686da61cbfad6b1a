"""uvicorn's httptools protocol with the limits httptools lacks: header size, slow clients, load.

httptools has no cap on header size, and it joins a header value that arrives in pieces by
concatenation, so one 80 MB header cost seconds of event loop before any of our code ran. This
protocol counts the bytes of a request's head before the parser sees them and answers 431 past
`MAX_HEADER_BYTES`. It also bounds time: a request's head must arrive within
`HEADER_TIMEOUT_SECONDS` of its first byte (or of the connection, for the first request), and its
body within `BODY_TIMEOUT_SECONDS` of the head; else 408 and the connection closes (a file upload,
up to BATCH_MAX_FILE_BYTES, may take longer while it keeps BATCH_UPLOAD_MIN_BYTES_PER_SECOND on
average after its first BODY_TIMEOUT_SECONDS). Past
`MAX_CONCURRENT_REQUESTS` connections or requests in progress a new request gets an
OpenAI-shaped 503 instead of uvicorn's plain-text one. While the gateway drains (SIGTERM, see
app/server/worker.py) every response closes its connection.

The CLI passes this class to uvicorn by name (`http="app.server.protocol:GatewayHttpProtocol"`), so
every worker imports it and reads its limits from the same settings; tests pass
`protocol_class(settings)`, a subclass with the limits of the gateway under test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.errors import SERVER, GatewayError
from app.api.middleware import API_PREFIXES
from app.config.settings import Settings

UPLOAD_PATHS = frozenset(prefix + "/files" for prefix in API_PREFIXES)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_concurrent: int | None  # None: no cap
    upload_min_rate: int = 100_000  # bytes per second an upload keeps past the body timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_header_bytes=settings.MAX_HEADER_BYTES,
            header_timeout=settings.HEADER_TIMEOUT_SECONDS,
            body_timeout=settings.BODY_TIMEOUT_SECONDS,
            max_concurrent=settings.MAX_CONCURRENT_REQUESTS or None,
            upload_min_rate=settings.BATCH_UPLOAD_MIN_BYTES_PER_SECOND,
        )


class GatewayHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[ServerLimits | None] = None  # read from Settings on first use if unset

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.limits is None:
            cls.limits = ServerLimits.from_settings(Settings())
        self._limits: ServerLimits = cls.limits
        self._gateway_app = self.app
        self._in_head = True  # the next bytes belong to a request's head
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._upload_began: float | None = None  # a file upload's body: when it began
        self._upload_bytes = 0

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._limits.header_timeout)  # an idle new connection is a slow head too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            self._upload_bytes += len(data)
            super().data_received(data)
            return
        room = self._limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what fits: if the head is still not complete, it is too large.
        self._head_bytes += room
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._head_incomplete():
            self._reject(431, "Request header fields too large", "request_headers_too_large")
            return
        super().data_received(data[room:])

    def _head_incomplete(self) -> bool:
        # A method, not the attribute: the parser's callbacks change it during data_received.
        return self._in_head

    # --- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self._limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        self._arm(self._limits.body_timeout)
        self.app = self._overloaded if self._over_capacity() else self._gateway_app
        super().on_headers_complete()
        upload = self.scope["method"] == "POST" and self.scope["path"] in UPLOAD_PATHS
        self._upload_began = self.loop.time() if upload else None
        self._upload_bytes = 0
        lifecycle = self.app_state.get("lifecycle")
        if lifecycle is not None and lifecycle.draining and self.cycle is not None:
            # Draining: answer, then close, so a client's next request opens a connection a
            # load balancer can send elsewhere instead of racing our shutdown on this one.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0  # a pipelined or keep-alive request follows
        self._upload_began = None
        super().on_message_complete()

    # --- limits ------------------------------------------------------------------------------

    def _over_capacity(self) -> bool:
        cap = self._limits.max_concurrent
        return cap is not None and (len(self.connections) > cap or len(self.tasks) >= cap)

    async def _overloaded(self, scope: Any, receive: Any, send: Any) -> None:
        error = GatewayError(
            503,
            "The gateway is at its limit of concurrent requests; try again shortly.",
            type=SERVER,
            code="overloaded",
            headers={"retry-after": "1", "connection": "close"},
        )
        body = error.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        waiting_for_body = not self._in_head and self.cycle is not None
        if waiting_for_body and self.cycle.response_started:
            self.transport.close()  # too late for a status: just end it
            return
        if not waiting_for_body and self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        if waiting_for_body and self._upload_keeps_up():
            self._arm(self._limits.body_timeout)
            return
        what = "body" if waiting_for_body else "headers"
        self._reject(408, f"The request {what} did not arrive in time", "request_timeout")

    def _upload_keeps_up(self) -> bool:
        """A file upload's body has arrived at the minimum rate, on average, since its first
        `body_timeout` (its grace, as any body's)."""
        if self._upload_began is None:
            return False
        late = self.loop.time() - self._upload_began - self._limits.body_timeout
        return self._upload_bytes >= self._limits.upload_min_rate * max(late, 0.0)

    def _reject(self, status: int, message: str, code: str) -> None:
        """Answer on the raw transport and close: the request never reaches the app (or, if it
        did, its handler sees a disconnect and whatever it sends is dropped)."""
        if self.cycle is not None and not self._in_head:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = GatewayError(status, message + ".", code=code).body()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def protocol_class(settings: Settings) -> type[GatewayHttpProtocol]:
    """The protocol with the limits of `settings`, for servers started in this process."""
    limits = ServerLimits.from_settings(settings)
    return type("GatewayHttpProtocol", (GatewayHttpProtocol,), {"limits": limits})
