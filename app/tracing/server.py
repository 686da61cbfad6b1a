"""Each request's SERVER span, or for an unsampled request only its IDs (imported once tracing is
on): the sampling decision is made before the SDK is asked (sampling.py), and an unsampled
request makes no SDK object at all: its IDs, its log fields and the headers that carry its
context upstream are written here, once, as the SDK's non-recording span would have had them.
`Tracing` (otel.py) adds the spans inside a request."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from app.tracing.requests import (
    CURRENT,
    ASGIHeaders,
    Headers,
    Opened,
    RequestTrace,
    log_ids,
    release,
    traceparent,
)
from app.tracing.sampling import (
    READABLE,
    TRACEPARENT_MAX,
    HeadSampler,
    TraceIds,
    parse_traceparent,
)

# http.request.method's known values (HTTP semconv); anything else is `_OTHER`.
_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
ERROR = Status(StatusCode.ERROR)
_HEADERS = ASGIHeaders()
_TRACECONTEXT = TraceContextTextMapPropagator()
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_log = logging.getLogger("app.tracing")


class ServerSpans:
    """The process's tracer, and each request's SERVER span (or only its IDs)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("embeddings-gateway")
        textmap = propagate.get_global_textmap()
        # Header names the configured propagators read (OTEL_PROPAGATORS): a request carrying
        # none of them is not worth a parse.
        self._fields = frozenset(f.encode("latin-1") for f in textmap.fields)
        # W3C trace context (and baggage) only, the default: its headers are written here.
        self._w3c = _w3c_only(textmap)
        ids = provider.id_generator
        self._ids = ids if isinstance(ids, TraceIds) else None
        # None: the SDK decides every request (a sampler, propagator or tracer of its own).
        self._head = None
        if READABLE and self._w3c and self._ids is not None and type(self._tracer) is Tracer:
            self._head = HeadSampler.of(provider.sampler)

    # -- the request ---------------------------------------------------------------------

    def server_start(self, scope: Mapping[str, Any], route: str | None) -> Opened:
        """The request's SERVER span, a child of the caller's span if its headers carry one,
        made current for everything the request does; unless it is not sampled: then no span
        is made, only its IDs. `route`: known already (the API's fixed paths); otherwise
        `server_end` takes it from the router."""
        headers: Headers = scope.get("headers") or ()
        head = self._head
        caller: bytes | None = None  # its traceparent (the first, as the SDK reads it)
        with_state = propagated = False  # a tracestate came; any propagation header did
        fields = self._fields
        for header, value in headers:
            if header in fields:
                propagated = True
                if header == b"traceparent":
                    caller = value if caller is None else caller
                elif header == b"tracestate":
                    with_state = True
                else:  # baggage: the SDK carries it
                    head = None
        if head is None or (caller is not None and len(caller) > TRACEPARENT_MAX):
            parent = propagate.extract(headers, getter=_HEADERS) if propagated else None
            return self._server_span(scope, route, parent)
        remote: SpanContext | None = None
        if caller is not None and with_state:  # the SDK's own reading, tracestate and all
            found = trace.get_current_span(_TRACECONTEXT.extract(headers, getter=_HEADERS))
            remote = found.get_span_context() if found is not INVALID_SPAN else None
        elif caller is not None:
            parsed = parse_traceparent(caller)
            if parsed is not None:
                trace_id, span_id, flags = parsed
                remote = SpanContext(trace_id, span_id, True, TraceFlags(flags))
        if remote is None:
            trace_id = _random_id(128)
            if head.sampled(trace_id, None):
                ids = self._ids
                assert ids is not None
                ids.drawn = trace_id  # the SDK's root span takes it, and agrees
                try:
                    opened = self._server_span(scope, route, None)
                finally:
                    ids.drawn = 0  # taken, unless a current span made it no root
                if opened.span.get_span_context().trace_id != trace_id:
                    # The SDK drew its own ID (a version that asks for IDs otherwise): its
                    # decision stands for this request, and it makes every one from now on.
                    self._head = None
                    _log.warning("tracing: the SDK decides sampling (it did not take our ID)")
                return opened
            flags = _RANDOM  # as the SDK's random IDs are marked
        else:
            trace_id = remote.trace_id
            if head.sampled(trace_id, remote.trace_flags):
                parent = trace.set_span_in_context(NonRecordingSpan(remote), Context())
                return self._server_span(scope, route, parent)
            flags = remote.trace_flags & _RANDOM
        # Not sampled: what the SDK's non-recording span would have been, without it.
        trace_hex, span_hex = format(trace_id, "032x"), format(_random_id(64), "016x")
        carried = {"traceparent": traceparent(trace_hex, span_hex, flags)}
        if remote is not None and remote.trace_state:
            carried["tracestate"] = remote.trace_state.to_header()
        log = {"trace_id": trace_hex, "span_id": span_hex, "trace_sampled": False}
        return Opened(INVALID_SPAN, None, CURRENT.set(RequestTrace(False, None, log, carried)))

    def _server_span(
        self, scope: Mapping[str, Any], route: str | None, parent: Context | None
    ) -> Opened:
        """The SERVER span, from the SDK (which decides whether it is sampled)."""
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
        request = self._request(span, context)
        # Made current only when sampled: what is under it then finds it; an unsampled one's
        # children are never made, and its context goes upstream from `request.headers`.
        token = otel_context.attach(context) if request.sampled else None
        return Opened(span, token, CURRENT.set(request))

    def _request(self, span: Span, context: Context) -> RequestTrace:
        ids = span.get_span_context()
        if ids.trace_flags.sampled:
            return RequestTrace(True, context, log_ids(ids, True))
        return RequestTrace(False, None, log_ids(ids, False), self._carried(ids, context))

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
            if span is INVALID_SPAN:
                return
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
                    span.set_status(ERROR)
                span.set_attributes(attributes)
            span.end()
        finally:
            release(opened)

    @staticmethod
    def log_fields() -> dict[str, Any] | None:
        """The IDs of this task's request's span for a log line (also when not sampled:
        `trace_sampled` says whether the trace was exported); None outside a request."""
        request = CURRENT.get()
        return None if request is None else request.log

    def _carried(
        self, ids: SpanContext, context: Context | None, span: Span | None = None
    ) -> dict[str, str]:
        """Headers carrying the context of the span `ids` (`span`, in `context`) upstream:
        written here for W3C trace context without baggage, else by the propagators."""
        # An invalid context (a tracer turned off) goes to the propagators, which send none.
        if ids.is_valid and self._w3c and not baggage.get_all(context):
            carried = {
                "traceparent": traceparent(
                    format(ids.trace_id, "032x"), format(ids.span_id, "016x"), ids.trace_flags
                )
            }
            if ids.trace_state:
                carried["tracestate"] = ids.trace_state.to_header()
            return carried
        carried = {}
        if span is not None:
            context = trace.set_span_in_context(span, context)
        propagate.inject(carried, context=context)
        return carried


def _w3c_only(textmap: TextMapPropagator) -> bool:
    """The propagators are W3C trace context, with or without W3C baggage (the default)."""
    kinds = {type(p) for p in getattr(textmap, "_propagators", ())}
    return TraceContextTextMapPropagator in kinds and kinds <= {
        TraceContextTextMapPropagator,
        W3CBaggagePropagator,
    }


def _random_id(bits: int) -> int:
    """A trace (128) or span (64) ID as the SDK's RandomIdGenerator draws it: never 0."""
    drawn = random.getrandbits(bits)
    while not drawn:
        drawn = random.getrandbits(bits)
    return drawn
