"""The OpenTelemetry side of app/tracing, imported only once tracing is on.

Cheap by construction, since a sampled span costs ~20 µs to record and ~30-45 µs more to encode
in the exporter's thread (docs/tracing.md, "Cost"):

- children of a span that is not sampled are never made: with every sampler the SDK ships
  they would not be sampled either (the parent-based ones follow the parent, the ratio ones
  decide on the trace ID they share), so only the request's SERVER span pays for sampling;
- waits become spans only when something waited (`waited` records them after the fact);
- spans start with `start_span` and an explicit context, attached only where code below must
  find it (the request, a retry, a hedge);
- a call made for several requests is one CLIENT span linking each request's wait;
- what the hot checks ask (is this request sampled? its IDs for a log line) is worked out once
  per request and kept in a context variable of ours (`_REQUEST`), not asked of the SDK's
  context each time (~2-4 µs a question, measured); an unsampled request's span is not even
  made current.

Nothing here ever puts input text, vectors or a key in a span: callers pass counts and names.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from app.tracing import CallOrigin
from app.tracing.provider import build_provider

Attributes = Mapping[str, AttributeValue]
Headers = Sequence[tuple[bytes, bytes]]

# http.request.method's known values (HTTP semconv); anything else is `_OTHER`.
_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_ERROR = Status(StatusCode.ERROR)


class _ASGIHeaders(Getter[Headers]):
    """Reads propagation headers straight from ASGI's `scope["headers"]` (lower-case names)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        found = [value.decode("latin-1") for header, value in carrier if header == name]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_HEADERS = _ASGIHeaders()


@dataclass(slots=True)
class Opened:
    """A span made current in this task until `close` (or `detach`); for a request's own span
    (or a root's), with the request's `_REQUEST` token."""

    span: Span
    token: object | None
    request: Token[_Request | None] | None = None


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is ~3x as slow
class _Request:
    """The trace of the request (or root work) this task serves, as the hot checks need it."""

    sampled: bool
    context: Context  # its span's, for the headers of an unsampled call (not made current)
    log: dict[str, Any]  # trace_id, span_id, trace_sampled


_REQUEST: ContextVar[_Request | None] = ContextVar("gateway_trace_request", default=None)


def _request(span: Span, context: Context) -> _Request:
    ids = span.get_span_context()
    sampled = ids.trace_flags.sampled
    log = {
        "trace_id": format(ids.trace_id, "032x"),
        "span_id": format(ids.span_id, "016x"),
        "trace_sampled": sampled,
    }
    return _Request(sampled, context, log)


def _sampled() -> bool:
    """Whether this task's request is sampled (False outside any)."""
    request = _REQUEST.get()
    return request is not None and request.sampled


class Tracing:
    """The process's tracer and the few shapes of span the gateway makes."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("embeddings-gateway")
        # Header names the configured propagators read (OTEL_PROPAGATORS): a request carrying
        # none of them is not worth a parse.
        self._fields = frozenset(f.encode("latin-1") for f in propagate.get_global_textmap().fields)

    @classmethod
    def from_environment(cls, protocol: str, service_name: str) -> Tracing:
        return cls(build_provider(protocol, service_name))

    def shutdown(self) -> None:
        self._provider.shutdown()  # the processor exports everything queued first

    # -- the request ---------------------------------------------------------------------

    def server_start(self, scope: Mapping[str, Any], route: str | None) -> Opened:
        """The request's SERVER span, a child of the caller's span if its headers carry one,
        made current for everything the request does. `route`: known already (the API's
        fixed paths); otherwise `server_end` takes it from the router."""
        headers: Headers = scope.get("headers") or ()
        parent = None
        fields = self._fields
        for header, _ in headers:
            if header in fields:
                parent = propagate.extract(headers, getter=_HEADERS)
                break
        method = scope.get("method") or "GET"
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme") or "http",
        }
        if method not in _METHODS:
            attributes["http.request.method"] = method = "_OTHER"
            attributes["http.request.method_original"] = scope.get("method") or ""
        name = "HTTP" if method == "_OTHER" else method
        if route is not None:
            attributes["http.route"] = route
            name = f"{name} {route}"
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        context = trace.set_span_in_context(span, parent)
        request = _request(span, context)
        # Made current only when sampled: what is under it then finds it; an unsampled one's
        # children are never made, and its context goes upstream from `request.context`.
        token = otel_context.attach(context) if request.sampled else None
        return Opened(span, token, _REQUEST.set(request))

    def server_end(
        self,
        opened: Opened,
        *,
        status: int | None,
        route: str | None,
        client_address: str,
        error_type: str | None = None,
        fault: bool = False,
    ) -> None:
        """End the SERVER span with what the request came to: its status (None: no response
        was sent), its route if the router matched one only now, the client address the
        gateway decided on (TRUSTED_PROXIES applied), and why it failed if it did. The span is
        an error on a 5xx or a `fault` of the gateway's, never for what the client did."""
        span = opened.span
        try:
            if span.is_recording():
                attributes: dict[str, AttributeValue] = {"client.address": client_address}
                if status is not None:
                    attributes["http.response.status_code"] = status
                    if status >= 500:
                        error_type, fault = error_type or str(status), True
                if route is not None:
                    attributes["http.route"] = route
                    method = getattr(span, "name", "HTTP").partition(" ")[0]
                    span.update_name(f"{method} {route}")
                if error_type is not None:
                    attributes["error.type"] = error_type
                if fault:
                    span.set_status(_ERROR)
                span.set_attributes(attributes)
            span.end()
        finally:
            _release(opened)

    @staticmethod
    def log_fields() -> dict[str, Any] | None:
        """The IDs of this task's request's span for a log line (also when not sampled:
        `trace_sampled` says whether the trace was exported); None outside a request."""
        request = _REQUEST.get()
        return None if request is None else request.log

    # -- spans inside a request ----------------------------------------------------------

    def child(
        self, name: str, attributes: Attributes | None = None, context: Context | None = None
    ) -> Span | None:
        """A span under the current one (or `context`'s), or None if that one is not sampled."""
        if not (_sampled() if context is None else _sampled_in(context)):
            return None
        return self._tracer.start_span(name, context=context, attributes=attributes)

    def waited(
        self,
        name: str,
        began_ns: int,
        attributes: Attributes | None = None,
        context: Context | None = None,
    ) -> None:
        """A wait that has just ended, which began at `began_ns` (time.time_ns())."""
        if _sampled() if context is None else _sampled_in(context):
            span = self._tracer.start_span(
                name, context=context, attributes=attributes, start_time=began_ns
            )
            span.end()

    def open(
        self, name: str, attributes: Attributes | None = None, *, began_ns: int | None = None
    ) -> Opened | None:
        """A child span made current in this task (what it awaits is under it), or None."""
        if not _sampled():
            return None
        span = self._tracer.start_span(name, attributes=attributes, start_time=began_ns)
        return Opened(span, otel_context.attach(trace.set_span_in_context(span)))

    @staticmethod
    def detach(opened: Opened) -> None:
        """Stop being current (the span goes on until `end`)."""
        _release(opened)

    @staticmethod
    def end(
        span: Span, error_type: str | None = None, attributes: Attributes | None = None
    ) -> None:
        if attributes:
            span.set_attributes(attributes)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(_ERROR)
        span.end()

    def close(
        self, opened: Opened, error_type: str | None = None, attributes: Attributes | None = None
    ) -> None:
        self.detach(opened)
        self.end(opened.span, error_type, attributes)

    def watch(self, name: str, awaitable: Awaitable[object]) -> asyncio.Future[object]:
        """`awaitable` as a future, with a span from now until it is done, wherever it is
        awaited (the key policy check runs beside the cache lookup)."""
        future = asyncio.ensure_future(awaitable)
        span = self.child(name)
        if span is not None:
            future.add_done_callback(functools.partial(_end_watched, span))
        return future

    # -- upstream calls ------------------------------------------------------------------

    def queued(self, attributes: Attributes | None) -> tuple[Context | None, Span | None]:
        """For a chunk entering a batcher's queue: its caller's context, and its wait span
        (None: not sampled, or outside any request)."""
        request = _REQUEST.get()
        if request is None or not request.sampled:
            return (None if request is None else request.context), None
        current = otel_context.get_current()
        return current, self._tracer.start_span("batching queue", attributes=attributes)

    @staticmethod
    def origin(chunks: Iterable[tuple[Context | None, Span | None]]) -> CallOrigin:
        """Where a call carrying these chunks belongs: beside the first sampled chunk's wait
        (else the first chunk's, unsampled), linking every sampled chunk's wait."""
        parent: Context | None = None
        links: list[SpanContext] = []
        count = 0
        for context, span in chunks:
            count += 1
            if span is not None:
                if not links:
                    parent = context
                links.append(span.get_span_context())
            elif parent is None:
                parent = context
        # None only for chunks queued before tracing was on: such a call starts a trace.
        return CallOrigin(parent or Context(), links, requests=count)

    @staticmethod
    def end_wait(span: Span, ended_ns: int, client: SpanContext | None) -> None:
        """End a chunk's wait (at `ended_ns`, when its batch left the queue; 0: now), linking
        the call that carried it."""
        if span.is_recording():
            if client is not None:
                span.add_link(client)
            span.end(end_time=ended_ns or None)

    def client_start(
        self, shape: Callable[[], tuple[str, Attributes]], origin: CallOrigin | None
    ) -> tuple[Span | None, dict[str, str]]:
        """An upstream call's CLIENT span (None if its trace is not sampled), its name and
        attributes from `shape()` (asked only if it is), and the headers that carry its
        context upstream, which go even when it is not sampled: the upstream then follows the
        gateway's decision."""
        headers: dict[str, str] = {}
        if origin is None:
            context = None
            request = _REQUEST.get()
            if request is None or not request.sampled:
                if request is not None:
                    propagate.inject(headers, context=request.context)
                return None, headers
        else:
            context = origin.parent
            parent = trace.get_current_span(context).get_span_context()
            if not parent.trace_flags.sampled:
                if parent.is_valid:
                    propagate.inject(headers, context=context)
                return None, headers
        name, attributes = shape()
        links = None
        if origin is not None:
            links = [Link(link) for link in origin.links]
            attributes = {**attributes, "gateway.batch.requests": origin.requests}
        span = self._tracer.start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes, links=links
        )
        propagate.inject(headers, context=trace.set_span_in_context(span, context))
        if origin is not None:
            origin.client = span.get_span_context()
        return span, headers

    # -- for work that is no request's (the Batch API's chunks) ---------------------------

    def root(
        self,
        name: str,
        linked: Iterable[tuple[str, str]] = (),
        attributes: Attributes | None = None,
    ) -> Opened:
        """A new trace, current in this task until `close`, linking spans known by their hex
        IDs (as `ids()` gave them, kept with the work): everything awaited under it (the
        embedder, routing, upstream calls) becomes its children."""
        links = [
            Link(
                SpanContext(
                    int(trace_id, 16),
                    int(span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
            )
            for trace_id, span_id in linked
        ]
        span = self._tracer.start_span(name, context=Context(), links=links, attributes=attributes)
        context = trace.set_span_in_context(span)
        request = _request(span, context)
        return Opened(span, otel_context.attach(context), _REQUEST.set(request))

    @staticmethod
    def ids() -> tuple[str, str] | None:
        """The current span's (trace ID, span ID) in hex, to link to it later; None outside a
        trace or in an unsampled one (there is nothing exported to link to)."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _sampled_in(context: Context) -> bool:
    return trace.get_current_span(context).get_span_context().trace_flags.sampled


def _release(opened: Opened) -> None:
    if opened.token is not None:
        otel_context.detach(opened.token)  # type: ignore[arg-type]
    if opened.request is not None:
        _REQUEST.reset(opened.request)


def _end_watched(span: Span, future: asyncio.Future[object]) -> None:
    if future.cancelled():
        Tracing.end(span, "cancelled")
        return
    error = future.exception()
    if error is None:
        span.end()
    else:  # refused (a 429: its code) or failed
        Tracing.end(span, str(getattr(error, "code", None) or type(error).__name__))
