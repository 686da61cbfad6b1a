"""OpenTelemetry off, or refused: nothing exported, the SDK not even imported, the gateway
serving; what `app.tracing.start()` refuses and why; and a root trace for work of no request
(the Batch API's chunks). tests/tracing/test_tracing.py: what a traced gateway exports.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import time
import uuid
from pathlib import Path

import pytest

from app import tracing
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream
from tests.harness import GatewayProcess
from tests.otlp_receiver import OTLPReceiver
from tests.redis_server import RedisServer
from tests.tracing_support import (
    SDK_IMPORTS,
    SERVICE,
    embed,
    gateway_env,
    log_lines,
    new_context,
    one,
    texts,
)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # no endpoint: off
        # An endpoint, but a sampler refused (it would trace everything): off, and serving.
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratoi"},
    ],
    ids=["unset", "bad-sampler"],
)
def test_untraced_gateways_export_nothing_and_never_import_the_sdk(
    registry: Path,
    receiver: OTLPReceiver,
    upstream: FakeUpstream,
    redis_server: RedisServer,
    settings: dict[str, str],
) -> None:
    service = f"{SERVICE}-untraced-{uuid.uuid4().hex[:6]}"
    env = gateway_env(registry, redis_server.url, OTEL_SERVICE_NAME=service, **settings)
    if settings:  # an endpoint, so that only the setting keeps the spans from the receiver
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        env["OTEL_BSP_SCHEDULE_DELAY"] = "50"
    with GatewayProcess(env) as process:
        embed(process, CLIENT_KEY, "m", texts("untraced"), traceparent=new_context()[2])
    (call,) = upstream.embedding_requests()
    assert "traceparent" not in call.headers
    output = process.output()
    assert [module for module in SDK_IMPORTS if module in output] == []
    assert not [s for s in receiver.spans() if s.resource.get("service.name") == service]
    lines = log_lines(process)
    assert lines and not [line for line in lines if "trace_id" in line]
    refused = [line["message"] for line in lines if line["logger"] == "app.tracing"]
    if "OTEL_TRACES_SAMPLER" in settings:
        assert refused == [
            "tracing is off: OTEL_TRACES_SAMPLER='parentbased_traceidratoi': one of "
            f"{sorted(tracing._SAMPLERS)}"
        ]
    else:
        assert refused == []


# -- what start() refuses, in this process (the SDK reads os.environ itself) -----------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_asked_for_by_an_endpoint_unless_something_turns_it_off(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.requested(environ) is on


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("OTEL_TRACES_SAMPLER_ARG", "10", "a ratio from 0 to 1"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf or grpc"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "the gateway exports OTLP"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "an http:// or https:// URL"),
        # Refused by the SDK itself, when it is built:
        ("OTEL_SPAN_LINK_COUNT_LIMIT", "many", "OTEL_SPAN_LINK_COUNT_LIMIT"),
    ],
)
def test_a_bad_value_is_logged_and_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str,
    why: str,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv(name, value)
    assert tracing.active is None
    with caplog.at_level("ERROR", logger="app.tracing"):
        assert tracing.start() is False
    assert tracing.active is None
    (record,) = [r for r in caplog.records if r.name == "app.tracing"]
    assert record.getMessage().startswith("tracing is off: ") and why in record.getMessage()


def test_grpc_is_used_when_its_exporter_is_installed_and_refused_otherwise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    installed = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    with caplog.at_level("INFO", logger="app.tracing"):
        try:
            assert tracing.start() is installed
        finally:
            tracing.shutdown()
    messages = [r.getMessage() for r in caplog.records if r.name == "app.tracing"]
    if installed:
        assert messages == ["tracing on: OTLP over grpc"]
    else:
        (message,) = messages
        assert "opentelemetry-exporter-otlp-proto-grpc" in message


def test_work_of_no_request_gets_a_trace_of_its_own_linked_to_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, receiver: OTLPReceiver
) -> None:
    # What the Batch API's chunks will use: a root span linking the batch's span, by the IDs
    # kept with the work; what runs under it nests, and log lines carry its IDs.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", f"{SERVICE}-roots")
    assert tracing.start() and tracing.active is not None
    traced = tracing.active
    try:
        assert traced.ids() is None and traced.log_fields() is None  # outside any trace
        batch_trace, batch_span, _ = new_context()
        opened = traced.root("batch chunk", [(batch_trace, batch_span)], {"gateway.lines": 3})
        ids = traced.ids()
        assert ids is not None and traced.log_fields() == {
            "trace_id": ids[0],
            "span_id": ids[1],
            "trace_sampled": True,
        }
        child = traced.child("cache lookup")
        assert child is not None
        traced.end(child)
        traced.close(opened)
        assert traced.ids() is None
    finally:
        tracing.shutdown()  # exports what is queued
    spans = [s for s in receiver.spans() if s.trace_id == ids[0]]
    root, child_span = one(spans, name="batch chunk"), one(spans, name="cache lookup")
    assert root.parent_span_id == "" and root.span_id == ids[1]
    assert [(link.trace_id, link.span_id) for link in root.links] == [(batch_trace, batch_span)]
    assert root.attributes == {"gateway.lines": 3}
    assert child_span.parent_span_id == root.span_id


def test_a_collector_that_never_answers_delays_a_worker_s_shutdown_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A listening socket that never accepts: the export's connection waits for an answer.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}"
        )
        assert tracing.start() and tracing.active is not None
        opened = tracing.active.root("queued at shutdown")
        tracing.active.close(opened)
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="app.tracing"):
            asyncio.run(tracing.flush(0.5))
        waited = time.monotonic() - began
    assert tracing.active is None
    assert 0.4 < waited < 5  # not the exporter's 10 s timeout, nor the SDK's 30 s
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.name == "app.tracing" and r.levelno >= logging.WARNING
    ]
    assert warned == ["tracing: spans still queued after 0.5s are dropped"]
