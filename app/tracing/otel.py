"""The OpenTelemetry side of app/tracing, imported only once tracing is on.

Cheap by construction, since a sampled span costs ~20 µs to record and ~20-35 µs more to encode
in the exporter's thread (docs/tracing.md, "Cost"):

- the request's sampling decision is made before the SDK is asked, and an unsampled request
  makes no SDK object at all (server.py);
- children of a span that is not sampled are never made: with every sampler the SDK ships
  they would not be sampled either (the parent-based ones follow the parent, the ratio ones
  decide on the trace ID they share);
- waits become spans only when something waited (`waited` records them after the fact);
- spans start with `start_span` and an explicit context, attached only where code below must
  find it (the request, a retry, a hedge);
- a call made for several requests is one CLIENT span linking each request's wait;
- what the hot checks ask (is this request sampled? its IDs for a log line) is kept in a
  context variable of ours (requests.py).

Nothing here ever puts input text, vectors or a key in a span: callers pass counts and names.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from app.tracing import CallOrigin, Queued
from app.tracing.provider import build_provider
from app.tracing.requests import CURRENT, Opened, release, sampled
from app.tracing.server import ERROR, ServerSpans

Attributes = Mapping[str, AttributeValue]
_NO_HEADERS: dict[str, str] = {}  # shared, never changed


class Tracing(ServerSpans):
    """The process's tracer and the few shapes of span the gateway makes."""

    @classmethod
    def from_environment(cls, protocol: str, service_name: str) -> Tracing:
        return cls(build_provider(protocol, service_name))

    def shutdown(self) -> None:
        self._provider.shutdown()  # the processor exports everything queued first

    # -- spans inside a request ----------------------------------------------------------

    def child(self, name: str, attributes: Attributes | None = None) -> Span | None:
        """A span under the current one, or None if that one is not sampled."""
        if not sampled():
            return None
        return self._tracer.start_span(name, attributes=attributes)

    def waited(
        self,
        name: str,
        began_ns: int,
        attributes: Attributes | None = None,
        origin: CallOrigin | None = None,
    ) -> None:
        """A wait that has just ended, which began at `began_ns` (time.time_ns()): under the
        current span, or beside the call `origin` describes."""
        if origin is None:
            if not sampled():
                return
            context = None
        elif (context := origin.parent) is None:
            return
        span = self._tracer.start_span(
            name, context=context, attributes=attributes, start_time=began_ns
        )
        span.end()

    def open(
        self, name: str, attributes: Attributes | None = None, *, began_ns: int | None = None
    ) -> Opened | None:
        """A child span made current in this task (what it awaits is under it), or None."""
        if not sampled():
            return None
        span = self._tracer.start_span(name, attributes=attributes, start_time=began_ns)
        return Opened(span, otel_context.attach(trace.set_span_in_context(span)))

    @staticmethod
    def detach(opened: Opened) -> None:
        """Stop being current (the span goes on until `end`)."""
        release(opened)

    @staticmethod
    def end(
        span: Span, error_type: str | None = None, attributes: Attributes | None = None
    ) -> None:
        if attributes:
            span.set_attributes(attributes)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(ERROR)
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

    def queued(self, attributes: Attributes | None) -> Queued | None:
        """A chunk entering a batcher's queue: its place in its request's trace, with its
        wait's span if that is sampled (None: outside any request)."""
        request = CURRENT.get()
        if request is None:
            return None
        if not request.sampled:
            return Queued(None, None, request.headers)
        span = self._tracer.start_span("batching queue", attributes=attributes)
        return Queued(otel_context.get_current(), span, None)

    @staticmethod
    def origin(chunks: Iterable[Queued | None]) -> CallOrigin:
        """Where a call carrying these chunks belongs: beside the first sampled chunk's wait,
        linking every sampled chunk's wait; with none sampled, the first chunk's context goes
        upstream. (None: a chunk queued before tracing was on.)"""
        parent: Context | None = None
        headers: dict[str, str] | None = None
        links: list[SpanContext] = []
        count = 0
        for chunk in chunks:
            count += 1
            if chunk is None:
                continue
            if chunk.span is not None:
                if not links:
                    parent = chunk.context
                links.append(chunk.span.get_span_context())
            elif headers is None:
                headers = chunk.headers
        return CallOrigin(parent, headers, links, requests=count)

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
        context upstream (not to be changed), which go even when it is not sampled: the
        upstream then follows the gateway's decision."""
        if origin is None:
            context = None
            request = CURRENT.get()
            if request is None:
                return None, _NO_HEADERS
            if not request.sampled:
                return None, request.headers or _NO_HEADERS
        else:
            context = origin.parent
            if context is None:
                return None, origin.headers or _NO_HEADERS
        name, attributes = shape()
        links = None
        if origin is not None:
            links = [Link(link) for link in origin.links]
            attributes = {**attributes, "gateway.batch.requests": origin.requests}
        span = self._tracer.start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes, links=links
        )
        ids = span.get_span_context()
        if origin is not None:
            origin.client = ids
        return span, self._carried(ids, context, span)

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
        return Opened(span, otel_context.attach(context), CURRENT.set(self._request(span, context)))

    @staticmethod
    def ids() -> tuple[str, str] | None:
        """The current span's (trace ID, span ID) in hex, to link to it later; None outside a
        trace or in an unsampled one (there is nothing exported to link to)."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _end_watched(span: Span, future: asyncio.Future[object]) -> None:
    if future.cancelled():
        Tracing.end(span, "cancelled")
        return
    error = future.exception()
    if error is None:
        span.end()
    else:  # refused (a 429: its code) or failed
        Tracing.end(span, str(getattr(error, "code", None) or type(error).__name__))
