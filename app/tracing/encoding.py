"""The OTLP export request for a batch of spans: the SDK encoder's message, built ~2x as fast.

The SDK's `encode_spans` (opentelemetry-exporter-otlp-proto-common) makes every protobuf message
on its own, each attribute's KeyValue and AnyValue, each span, each ScopeSpans, and then hands
it to its parent, which copies it (a repeated message field takes a copy): each span is built
once and copied three times. That took ~42-70 µs a span of the gateway's (a SERVER, a wait and
a CLIENT span of a request, serialised, 510 at a time, measured on this machine), in the
exporter's thread and holding the GIL. This builds the same message in place (`add()` on each
repeated field, then its fields set): ~21-35 µs a span, with the same classes from
opentelemetry-proto and the same rules: tests/tracing/test_tracing_encoding.py checks that its
bytes are the SDK encoder's, for spans of every shape.

`use_for(module)` makes an SDK exporter module (the OTLP/HTTP or gRPC trace exporter) call it in
place of the SDK's function, which it looks up by name at each export. That reaches into the
SDK's insides (two helpers of its `_internal` package, the exporter module's global name), which
another SDK version may change, so it is done only when all of them are as expected AND, checked
once at start-up, this builds the very bytes the SDK's encoder builds for spans of the shapes the
gateway records; otherwise the SDK's encoder is kept (logged), and traces are as they would be
without this module. tests/tracing/test_tracing_encoding.py covers both ways.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from opentelemetry.exporter.otlp.proto.common import trace_encoder
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, SpanFlags
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PBSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import Attributes

_sdk: ModuleType | None
try:  # the SDK encoder's own helpers for a resource and a scope (rare: once per batch each)
    from opentelemetry.exporter.otlp.proto.common import _internal as _sdk
except ImportError:  # an SDK laid out otherwise
    _sdk = None

log = logging.getLogger("app.tracing")
_encode_resource: Any = getattr(_sdk, "_encode_resource", None)
_encode_instrumentation_scope: Any = getattr(_sdk, "_encode_instrumentation_scope", None)

_KINDS = {
    SpanKind.INTERNAL: PBSpan.SpanKind.SPAN_KIND_INTERNAL,
    SpanKind.SERVER: PBSpan.SpanKind.SPAN_KIND_SERVER,
    SpanKind.CLIENT: PBSpan.SpanKind.SPAN_KIND_CLIENT,
    SpanKind.PRODUCER: PBSpan.SpanKind.SPAN_KIND_PRODUCER,
    SpanKind.CONSUMER: PBSpan.SpanKind.SPAN_KIND_CONSUMER,
}
_LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_Groups = dict[Resource, tuple[ResourceSpans, dict[InstrumentationScope | None, ScopeSpans]]]


def use_for(module: ModuleType) -> bool:
    """Have `module`'s exporter encode with `encode_spans` below; False (and the SDK's own
    encoder kept) if the SDK is not shaped as this expects or its bytes differ from ours."""
    sdk = getattr(module, "encode_spans", None)
    if sdk is encode_spans:
        return True
    why = None
    if sdk is not trace_encoder.encode_spans:
        why = f"{module.__name__} does not call the SDK's encode_spans"
    elif _encode_resource is None or _encode_instrumentation_scope is None:
        why = "the SDK's encoder helpers are not where they were"
    elif not agrees():
        why = "its bytes differ from the SDK encoder's"
    if why is not None:
        log.warning("tracing: the SDK's own OTLP encoder is used (%s)", why)
        return False
    setattr(module, "encode_spans", encode_spans)  # noqa: B010 (a module, not a typed object)
    return True


def agrees() -> bool:
    """Whether `encode_spans` builds the SDK encoder's bytes for spans of the shapes the
    gateway records (SERVER under a caller's span, CLIENT with links, waits, an error, an
    event, two scopes); a few spans, once per process."""
    try:
        spans = _probes()
        if len(spans) != 4:  # some were not recorded: nothing to compare
            return False
        ours: bytes = encode_spans(spans).SerializeToString(deterministic=True)
        theirs: bytes = trace_encoder.encode_spans(spans).SerializeToString(deterministic=True)
        return ours == theirs
    except Exception:  # anything this does not expect: the SDK's encoder is the safe choice
        log.debug("tracing: encoder check failed", exc_info=True)
        return False


def _probes() -> list[ReadableSpan]:
    provider = TracerProvider(
        sampler=ALWAYS_ON,  # not the environment's: every probe must record
        resource=Resource({"service.name": "probe", "n": 1}, "https://example.invalid/s"),
        shutdown_on_exit=False,
    )
    tracer = provider.get_tracer("embeddings-gateway")
    other = provider.get_tracer("other", "1.0", schema_url="https://example.invalid/t")
    caller = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "opaque")]),
    )
    server = tracer.start_span(
        "POST /v1/embeddings",
        context=set_span_in_context(NonRecordingSpan(caller)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "server.port": 8000, "ok": True},
    )
    context = set_span_in_context(server)
    wait = tracer.start_span("batching queue", context=context, attributes={"w": 0.5})
    client = tracer.start_span(
        "embeddings m",
        context=context,
        kind=SpanKind.CLIENT,
        attributes={"gen_ai.request.encoding_formats": ["float"], "n": [1, 2]},
        links=[Link(wait.get_span_context(), {"why": "merged"})],
    )
    client.set_status(StatusCode.ERROR)
    client.add_event("retry", {"attempt": 2})
    wait.add_link(client.get_span_context())
    internal = other.start_span("cache lookup", context=context)
    spans = [wait, client, internal, server]
    for span in spans:
        span.end()
    return [span for span in spans if isinstance(span, ReadableSpan)]  # all of them


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """What the SDK's `trace_encoder.encode_spans(spans)` returns: the spans by resource, then
    by instrumentation scope, each group in the order first seen."""
    request = ExportTraceServiceRequest()
    groups: _Groups = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        found = groups.get(resource)
        if found is None:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.SetInParent()  # present even when empty, as the SDK's
            resource_spans.resource.CopyFrom(_encode_resource(resource))
            if resource.schema_url:
                resource_spans.schema_url = resource.schema_url
            found = groups[resource] = (resource_spans, {})
        resource_spans, scopes = found
        scope_spans = scopes.get(scope)
        if scope_spans is None:
            scope_spans = scopes[scope] = resource_spans.scope_spans.add()
            scope_spans.scope.SetInParent()
            scope_spans.scope.CopyFrom(_encode_instrumentation_scope(scope))
            if scope is not None and scope.schema_url:
                scope_spans.schema_url = scope.schema_url
        _put_span(scope_spans.spans.add(), span)
    return request


def _put_span(out: PBSpan, span: ReadableSpan) -> None:
    context = span.get_span_context()
    assert context is not None
    out.trace_id = context.trace_id.to_bytes(16, "big")
    out.span_id = context.span_id.to_bytes(8, "big")
    if context.trace_state:
        out.trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
    parent = span.parent
    if parent:
        out.parent_span_id = parent.span_id.to_bytes(8, "big")
    out.name = span.name
    out.kind = _KINDS[span.kind]
    if span.start_time is not None:
        out.start_time_unix_nano = span.start_time
    if span.end_time is not None:
        out.end_time_unix_nano = span.end_time
    if span.attributes:
        _put_attributes(out.attributes, span.attributes)
    for event in span.events:
        encoded = out.events.add()
        encoded.name = event.name
        encoded.time_unix_nano = event.timestamp
        if event.attributes:
            _put_attributes(encoded.attributes, event.attributes)
        encoded.dropped_attributes_count = event.dropped_attributes
    for link in span.links:
        linked = out.links.add()
        linked.trace_id = link.context.trace_id.to_bytes(16, "big")
        linked.span_id = link.context.span_id.to_bytes(8, "big")
        if link.attributes:
            _put_attributes(linked.attributes, link.attributes)
        linked.dropped_attributes_count = link.dropped_attributes
        linked.flags = _flags(link.context)
    status = span.status
    if status is not None:
        out.status.SetInParent()  # present even when unset, as the SDK's
        out.status.code = status.status_code.value  # type: ignore[assignment]
        if status.description:
            out.status.message = status.description
    out.dropped_attributes_count = span.dropped_attributes
    out.dropped_events_count = span.dropped_events
    out.dropped_links_count = span.dropped_links
    out.flags = _flags(parent)


def _flags(parent: SpanContext | None) -> int:
    return _REMOTE if parent and parent.is_remote else _LOCAL


def _put_attributes(out: Any, attributes: Attributes) -> None:
    """`out`: a repeated KeyValue field. One that cannot be encoded is logged and left out."""
    assert attributes is not None
    for key, value in attributes.items():
        pair: KeyValue = out.add()
        try:
            pair.key = key
            _put_value(pair.value, value)
        except Exception as error:
            del out[-1]
            log.exception("tracing: attribute %s not exported: %s", key, error)


def _put_value(out: AnyValue, value: Any) -> None:
    """The SDK's `_encode_value`, in the same order of checks (a bool is an int; a str and
    bytes are sequences)."""
    if value is None:
        out.SetInParent()
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, Sequence):
        values = out.array_value.values
        out.array_value.SetInParent()
        for item in value:
            _put_value(values.add(), item)
    elif isinstance(value, Mapping):
        pairs = out.kvlist_value.values
        out.kvlist_value.SetInParent()
        for key, item in value.items():
            pair = pairs.add()
            pair.key = str(key)
            _put_value(pair.value, item)
    else:
        raise TypeError(f"Invalid type {type(value)} of value {value}")
