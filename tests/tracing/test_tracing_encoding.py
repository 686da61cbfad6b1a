"""The OTLP export request app/tracing/encoding.py builds is, byte for byte, the one the SDK's
own encoder builds, for spans of every shape the SDK can record; a traced gateway's exporter
uses it (tests/tracing/test_tracing.py decodes what it sends); and where the SDK is not shaped
as it expects, or its bytes would differ, the SDK's own encoder is kept."""

from __future__ import annotations

import logging
import types

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common import trace_encoder
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from app import tracing
from app.tracing import encoding


def _provider(
    resource: Resource, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=limits, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def spans_of_every_shape() -> list[ReadableSpan]:
    first, memory = _provider(
        Resource({"service.name": "a", "k8s.pod.name": "p"}, "https://schema/1")
    )
    second, memory2 = _provider(
        Resource({"service.name": "b"}),
        SpanLimits(max_span_attributes=2, max_links=1, max_events=1),
    )
    one = first.get_tracer("embeddings-gateway")
    other = first.get_tracer("other", "1.2", schema_url="https://schema/2", attributes={"x": 1})
    limited = second.get_tracer("limited")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "opaque"), ("other", "1")]),
    )
    caller = trace.set_span_in_context(NonRecordingSpan(remote), Context())
    server = one.start_span(
        "POST /v1/embeddings",
        context=caller,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "url.path": "/v1/embeddings",
            "server.port": 443,
        },
    )
    server.set_attributes({"http.response.status_code": 500, "error.type": "500"})
    server.set_status(Status(StatusCode.ERROR, "it broke"))
    inside = trace.set_span_in_context(server, caller)
    kinds = [SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER]
    for number, kind in enumerate(kinds):
        tracer = other if number % 2 else one  # scopes interleaved
        span = tracer.start_span(
            f"span {number}",
            context=inside,
            kind=kind,
            attributes={
                "str": "text",
                "empty": "",
                "bool": True,
                "int": -(2**63),
                "big": 2**63,  # not an int64: the SDK's encoder leaves it out, and so must we
                "float": 0.25,
                "bytes": b"\x00\x01",
                "strings": ("float", "base64"),
                "ints": [1, 2, 3],
                "mixed": (1, "two", 3.0, False, None),
                "nothing": (),
                "mapping": {"a": 1, "b": ("c",)},
            },
            links=[
                Link(remote, {"gateway.batch.index": number}),
                Link(SpanContext(7, 8, is_remote=False, trace_flags=TraceFlags(1))),
            ],
        )
        span.add_event("ev", {"n": number}, timestamp=1_000 + number)
        span.add_event("bare")
        span.add_link(remote)
        if number == 1:
            span.set_status(StatusCode.OK)
        span.end()
    root = one.start_span("root", context=Context())  # no parent, no attributes
    root.end()
    cut = limited.start_span(
        "limited",
        attributes={"a": 1, "b": 2, "c": 3},  # one dropped
        links=[Link(remote), Link(remote)],  # one dropped
    )
    cut.add_event("e1")
    cut.add_event("e2")  # dropped
    cut.end()
    server.end()
    plain = ReadableSpan("handmade", context=remote, resource=Resource({}), status=None)  # type: ignore[arg-type]
    finished = [*memory.get_finished_spans(), *memory2.get_finished_spans(), plain]
    # Resources and scopes interleaved, as spans from two processors' batches would be.
    return finished[::2] + finished[1::2]


def test_the_request_is_the_sdk_encoders_byte_for_byte(caplog: pytest.LogCaptureFixture) -> None:
    spans = spans_of_every_shape()
    with caplog.at_level(logging.ERROR):
        sdk = trace_encoder.encode_spans(spans)
        ours = encoding.encode_spans(spans)
    assert ours == sdk
    assert ours.SerializeToString(deterministic=True) == sdk.SerializeToString(deterministic=True)
    assert ours.SerializePartialToString() == sdk.SerializePartialToString()
    # The attribute no int64 holds was left out, by both, and said so, by both.
    assert sum("big" in r.getMessage() for r in caplog.records) == 2 * 4
    assert len(sdk.resource_spans) == 3 and sum(len(r.scope_spans) for r in sdk.resource_spans) == 4


def test_a_traced_gateways_otlp_http_exporter_encodes_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    try:
        assert tracing.start()
        assert http_exporter.encode_spans is encoding.encode_spans  # type: ignore[attr-defined]
    finally:
        tracing.shutdown()


def _exporter_module() -> types.ModuleType:
    """An exporter module as the SDK's are: it calls the SDK's encoder by this global name."""
    module = types.ModuleType("some_exporter")
    module.encode_spans = trace_encoder.encode_spans  # type: ignore[attr-defined]
    return module


def test_an_exporter_module_shaped_as_the_sdks_gets_it() -> None:
    module = _exporter_module()
    assert encoding.agrees()
    assert encoding.use_for(module)
    assert module.encode_spans is encoding.encode_spans


def test_a_module_that_calls_another_encoder_keeps_it(caplog: pytest.LogCaptureFixture) -> None:
    module = types.ModuleType("other_exporter")
    module.encode_spans = its_own = lambda spans: None  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="app.tracing"):
        assert not encoding.use_for(module)
    assert module.encode_spans is its_own
    assert "does not call the SDK's encode_spans" in caplog.text


def test_where_its_bytes_would_differ_the_sdks_encoder_is_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As if an SDK version encoded something this module does not know (here: a span's name
    # differently): the start-up check sees it, and the SDK's encoder stays.
    put_span = encoding._put_span

    def renamed(out: object, span: ReadableSpan) -> None:
        put_span(out, span)  # type: ignore[arg-type]
        out.name += "!"  # type: ignore[attr-defined]

    monkeypatch.setattr(encoding, "_put_span", renamed)
    module = _exporter_module()
    with caplog.at_level(logging.WARNING, logger="app.tracing"):
        assert not encoding.agrees()
        assert not encoding.use_for(module)
    assert module.encode_spans is trace_encoder.encode_spans
    assert "bytes differ" in caplog.text


def test_without_the_sdks_helpers_where_they_were_the_sdks_encoder_is_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(encoding, "_encode_resource", None)
    module = _exporter_module()
    with caplog.at_level(logging.WARNING, logger="app.tracing"):
        assert not encoding.use_for(module)
    assert module.encode_spans is trace_encoder.encode_spans
    assert "helpers" in caplog.text
