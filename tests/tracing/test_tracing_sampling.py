"""The request's sampling decision, made before the SDK is asked (app/tracing/sampling.py), is
the SDK's own: for every sampler OTEL_TRACES_SAMPLER names, a sweep of trace IDs (around the
ratio's bound, and random) and callers' flags; and an unsampled request's IDs and headers are
what the SDK's non-recording span would have given. tests/tracing/test_tracing.py: across sockets.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from app import tracing
from app.tracing.otel import Tracing
from app.tracing.requests import CURRENT
from app.tracing.sampling import HeadSampler, parse_traceparent
from tests.otlp_receiver import OTLPReceiver
from tests.tracing_support import SERVICE

_LOW = sampling.TraceIdRatioBased.TRACE_ID_LIMIT
SAMPLERS = [
    ("always_on", None),
    ("always_off", None),
    ("parentbased_always_on", None),
    ("parentbased_always_off", None),
    *(
        (name, ratio)
        for name in ("traceidratio", "parentbased_traceidratio")
        for ratio in ("0", "0.1", "0.25", "0.5", "1", "1e-12", "0.999999999999")
    ),
]


def sdk_sampler(monkeypatch: pytest.MonkeyPatch, name: str, ratio: str | None) -> sampling.Sampler:
    """The sampler the SDK builds from the environment, as TracerProvider does."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if ratio is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    return sampling._get_from_env_or_default()


def trace_ids(bound: int) -> Iterator[int]:
    rng = random.Random(26)
    high = rng.getrandbits(64) << 64  # the high half is not looked at: any value
    for low in (0, 1, bound - 1, bound, bound + 1, _LOW - 1, _LOW):
        if 0 <= low <= _LOW:
            yield high | low or 1
    for _ in range(300):
        yield rng.getrandbits(128) or 1


@pytest.mark.parametrize(("name", "ratio"), SAMPLERS)
def test_the_decision_is_the_sdk_samplers_for_every_trace_id_and_callers_flags(
    monkeypatch: pytest.MonkeyPatch, name: str, ratio: str | None
) -> None:
    sampler = sdk_sampler(monkeypatch, name, ratio)
    head = HeadSampler.of(sampler)
    assert head is not None
    bound = round(float(ratio or 0) * (_LOW + 1))
    decided = set()
    for trace_id in trace_ids(bound):
        for flags in (None, 0x00, 0x01, 0x02, 0x03):
            parent = None
            if flags is not None:
                caller = SpanContext(trace_id, 0x1234, True, TraceFlags(flags))
                parent = trace.set_span_in_context(NonRecordingSpan(caller), Context())
            decision = sampler.should_sample(
                parent, trace_id, "POST /v1/embeddings", SpanKind.SERVER
            ).decision
            sdk = decision is sampling.Decision.RECORD_AND_SAMPLE
            assert head.sampled(trace_id, flags) is sdk, (hex(trace_id), flags)
            decided.add(sdk)
    if name.endswith("traceidratio") and ratio not in ("0", "1"):
        assert decided == {True, False}  # the sweep crossed the bound both ways


class _Mine(sampling.TraceIdRatioBased):
    def should_sample(self, *args: object, **kwargs: object) -> sampling.SamplingResult:
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE)


@pytest.mark.parametrize(
    "sampler",
    [
        _Mine(0.1),
        sampling.ParentBased(sampling.ALWAYS_ON, remote_parent_sampled=_Mine(0.5)),
        sampling.StaticSampler(sampling.Decision.RECORD_ONLY),
    ],
    ids=["subclass", "custom-delegate", "record-only"],
)
def test_a_sampler_it_cannot_mirror_leaves_the_decision_to_the_sdk(
    sampler: sampling.Sampler,
) -> None:
    assert HeadSampler.of(sampler) is None


@pytest.mark.parametrize(
    "header",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-future",
        " \t00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # 00 has no more
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "garbage",
    ],
)
def test_a_traceparent_is_read_as_the_sdks_propagator_reads_it(header: str) -> None:
    found = trace.get_current_span(propagate.extract({"traceparent": header})).get_span_context()
    expected = None
    if found.is_valid:
        expected = (found.trace_id, found.span_id, int(found.trace_flags))
    assert parse_traceparent(header.encode("latin-1")) == expected


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch, receiver: OTLPReceiver) -> Iterator[Tracing]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", f"{SERVICE}-sampling")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    assert tracing.start() and tracing.active is not None
    try:
        yield tracing.active
    finally:
        tracing.shutdown()


def _scope(*headers: tuple[str, str]) -> dict[str, object]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/embeddings",
        "scheme": "http",
        "headers": [(b"host", b"gw"), *((k.encode(), v.encode()) for k, v in headers)],
    }


@pytest.mark.parametrize(
    "sent",
    [
        (),
        (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),),
        (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02"),),
        (
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            ("tracestate", "vendor=opaque,other=1"),
        ),
        (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
        (("traceparent", "not one"), ("tracestate", "vendor=x")),
    ],
    ids=["none", "unsampled", "unsampled-random", "with-tracestate", "sampled", "invalid"],
)
def test_a_request_gets_the_ids_decision_and_headers_the_sdk_would_give_it(
    traced: Tracing, receiver: OTLPReceiver, sent: tuple[tuple[str, str], ...]
) -> None:
    sampler = traced._provider.sampler
    caller = propagate.extract(dict(sent))
    remote = trace.get_current_span(caller).get_span_context()
    seen = set()
    exported: set[str] = set()
    for _ in range(200):  # new traces: some sampled, some not (the ratio is 0.5)
        opened = traced.server_start(_scope(*sent), "/v1/embeddings")
        try:
            request = CURRENT.get()
            assert request is not None
            trace_id, span_id = int(request.log["trace_id"], 16), int(request.log["span_id"], 16)
            parent = caller if remote.is_valid else None
            sdk = sampler.should_sample(parent, trace_id, "POST /v1/embeddings").decision
            sdk_sampled = sdk is sampling.Decision.RECORD_AND_SAMPLE
            assert request.sampled is request.log["trace_sampled"] is sdk_sampled
            seen.add(request.sampled)
            if request.sampled:
                exported.add(request.log["trace_id"])
            if remote.is_valid:
                assert trace_id == remote.trace_id and span_id != remote.span_id
            span, headers = traced.client_start(lambda: ("embeddings m", {}), None)
            if request.sampled:
                assert span is not None and opened.span.get_span_context().span_id == span_id
                ids = span.get_span_context()
                assert (ids.trace_id, ids.trace_flags & 1) == (trace_id, 1)
                span.end()
                continue
            # What the SDK's non-recording SERVER span would send upstream: the trace's ID, the
            # span's own ID, the caller's flags (or a new trace's "random" flag) unsampled,
            # and the caller's tracestate.
            random_bit = remote.trace_flags & 2 if remote.is_valid else 2
            expected = SpanContext(
                trace_id,
                span_id,
                False,
                TraceFlags(random_bit),
                remote.trace_state if remote.is_valid else TraceState(),
            )
            wanted: dict[str, str] = {}
            propagate.inject(wanted, trace.set_span_in_context(NonRecordingSpan(expected)))
            assert headers == wanted and span is None
        finally:
            traced.server_end(opened, status=200, route=None, client_address="127.0.0.1")
        assert CURRENT.get() is None
    if not remote.is_valid:
        assert seen == {True, False}
    else:
        assert seen == {bool(remote.trace_flags & 1)}  # the caller's decision
    # What was sampled, and only that, reached the collector.
    tracing.shutdown()
    service = f"{SERVICE}-sampling"
    servers = {
        s.trace_id
        for s in receiver.spans()
        if s.kind == "SERVER" and s.resource["service.name"] == service
    }
    assert servers == exported
    receiver.clear()


def _tracing_with(sampler: sampling.Sampler) -> Tracing:
    """A Tracing on a provider of the gateway's shape (its ID generator) with `sampler`, and no
    processor: nothing is exported."""
    from opentelemetry.sdk.trace import TracerProvider

    from app.tracing.sampling import TraceIds

    provider = TracerProvider(sampler=sampler, id_generator=TraceIds(), shutdown_on_exit=False)
    return Tracing(provider)


def _decisions(traced: Tracing, count: int) -> set[bool]:
    seen = set()
    for _ in range(count):
        opened = traced.server_start(_scope(), "/v1/embeddings")
        try:
            request = CURRENT.get()
            assert request is not None
            seen.add(request.sampled)
        finally:
            traced.server_end(opened, status=200, route=None, client_address="127.0.0.1")
    return seen


def test_with_a_sampler_it_does_not_know_the_sdk_decides_every_request() -> None:
    # _Mine is a ratio sampler by its type, at 0.1, but samples everything: the SDK's answer.
    traced = _tracing_with(_Mine(0.1))
    assert traced._head is None
    assert _decisions(traced, 60) == {True}


def test_if_the_sdk_does_not_take_the_drawn_trace_id_it_decides_from_then_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    from app.tracing.sampling import TraceIds

    # As an SDK version that drew its trace IDs some other way would behave.
    monkeypatch.setattr(TraceIds, "generate_trace_id", RandomIdGenerator.generate_trace_id)
    traced = _tracing_with(sampling.ALWAYS_ON)
    before = traced._head
    with caplog.at_level(logging.WARNING, logger="app.tracing"):
        assert _decisions(traced, 3) == {True}
    assert before is not None and traced._head is None
    assert "the SDK decides sampling" in caplog.text


def test_without_the_sdks_traceparent_pattern_the_sdk_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.tracing import server

    monkeypatch.setattr(server, "READABLE", False)  # as if the SDK's private names were gone
    traced = _tracing_with(sampling.ParentBased(sampling.TraceIdRatioBased(0.5)))
    assert traced._head is None
    assert _decisions(traced, 60) == {True, False}  # still the SDK's ratio: 2^-59 to fail
