"""OpenTelemetry traces across real sockets: a real gateway process exports OTLP/HTTP to a real
receiver (tests/otlp_receiver.py), is called with W3C trace context by a real client, and
calls a fake upstream that records the headers it got.

Checked: the caller's span is the SERVER span's parent; the cache lookup, the key's policy
check, queue waits, retries and hedges are spans under it; each upstream call is a CLIENT span
with the GenAI attributes, its context sent upstream; a merged call links every request it
carries and each request links it; the access line carries the IDs; an unsampled request exports
nothing but still propagates; no key and no input is in any span; spans still queued are
exported when the workers stop. tests/tracing/test_tracing_off.py: when tracing is off or
refused.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, Fault
from tests.fakes.vectors import fake_token_count
from tests.harness import GatewayProcess
from tests.keys_support import create_key
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan, trace_tree
from tests.redis_server import RedisServer
from tests.tracing_support import (
    SDK_IMPORTS,
    SERVICE,
    assert_nothing_secret,
    embed,
    gateway_env,
    in_trace,
    log_lines,
    new_context,
    one,
    texts,
)


@pytest.fixture(scope="module")
def gateway(
    registry: Path, receiver: OTLPReceiver, redis_server: RedisServer
) -> Iterator[GatewayProcess]:
    env = gateway_env(
        registry,
        redis_server.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    with GatewayProcess(env) as process:
        yield process


@pytest.fixture(scope="module")
def keys(gateway: GatewayProcess) -> dict[str, str]:
    """Managed keys: one with a per-key limit (so a policy check runs), one in the bulk lane."""
    return {
        "limited": create_key(gateway.url, name="limited", rate_limit_per_second=1000)["key"],
        "bulk": create_key(gateway.url, name="bulk", priority="bulk")["key"],
    }


def test_a_request_is_one_trace_from_the_callers_span_to_the_upstream_call(
    gateway: GatewayProcess, receiver: OTLPReceiver, upstream: FakeUpstream, keys: dict[str, str]
) -> None:
    trace_id, caller_span, traceparent = new_context()
    inputs = texts("a", "b")
    response = embed(
        gateway, keys["limited"], "m", inputs, traceparent=traceparent, tracestate="vendor=opaque"
    )
    wanted = ("POST /v1/embeddings", "cache lookup", "key policy check", "embeddings up-m")
    spans = [s for s in receiver.wait_for(in_trace(trace_id, *wanted)) if s.trace_id == trace_id]

    server = one(spans, kind="SERVER")
    assert server.parent_span_id == caller_span  # the caller's span is its parent
    assert server.trace_state == "vendor=opaque"
    assert server.name == "POST /v1/embeddings"
    assert server.attributes == {
        "http.request.method": "POST",
        "url.path": "/v1/embeddings",
        "url.scheme": "http",
        "http.route": "/v1/embeddings",
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
    }
    assert not server.error
    assert server.resource["service.name"] == SERVICE
    cache = one(spans, name="cache lookup")
    policy = one(spans, name="key policy check")
    client = one(spans, kind="CLIENT")
    assert cache.parent_span_id == policy.parent_span_id == client.parent_span_id == server.span_id
    assert cache.attributes == {"gateway.cache.items": 2, "gateway.cache.hits": 0}
    assert client.name == "embeddings up-m"
    assert client.attributes == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "nanogpt",
        "gen_ai.request.model": "up-m",
        "gateway.provider": "up",
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "gen_ai.request.encoding_formats": ["float"],
        "gen_ai.embeddings.dimension.count": 16,
        "gateway.inputs": 2,
        "gen_ai.usage.input_tokens": sum(fake_token_count(t) for t in inputs),
    }
    assert server.start_ns <= cache.start_ns and client.end_ns <= server.end_ns
    # As a tracing UI shows it (docs/tracing.md has one), without the times.
    assert re.sub(r" [\d.]+ ms", "", trace_tree(spans, trace_id)).splitlines() == [
        "POST /v1/embeddings [SERVER]",
        "├─ key policy check [INTERNAL]",
        "├─ cache lookup [INTERNAL]",
        "└─ embeddings up-m [CLIENT]",
    ]
    # The call's own context went upstream, the caller's tracestate with it.
    (call,) = upstream.embedding_requests()
    assert call.headers["traceparent"] == f"00-{trace_id}-{client.span_id}-01"
    assert call.headers["tracestate"] == "vendor=opaque"
    # The access line carries the SERVER span's IDs.
    (line,) = [
        line
        for line in log_lines(gateway)
        if line.get("request_id") == response.headers["x-request-id"]
    ]
    assert (line["trace_id"], line["span_id"], line["trace_sampled"]) == (
        trace_id,
        server.span_id,
        True,
    )
    assert_nothing_secret(spans, *keys.values())
    # The positive control for the test below: a traced gateway did import the SDK.
    assert all(module in gateway.output() for module in SDK_IMPORTS)


def test_a_merged_call_links_each_request_it_carries_and_each_request_links_it(
    gateway: GatewayProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    upstream.latency = 0.5  # the one call slot stays busy while the others arrive and queue
    contexts = [new_context() for _ in range(6)]
    inputs = texts(*(str(i) for i in range(len(contexts))))

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.url}/v1/embeddings",
                        headers={"authorization": f"Bearer {CLIENT_KEY}", "traceparent": parent},
                        json={"model": "m", "input": text},
                    )
                    for (_, _, parent), text in zip(contexts, inputs, strict=True)
                )
            )
        assert [a.status_code for a in answers] == [200] * len(answers)

    asyncio.run(burst())
    ours = {trace_id for trace_id, _, _ in contexts}

    def merged_and_ended(spans: list[ReceivedSpan]) -> bool:
        servers = {s.trace_id for s in spans if s.kind == "SERVER" and s.trace_id in ours}
        merged = [s for s in spans if s.kind == "CLIENT" and len(s.links) >= 2]
        return servers == ours and any({link.trace_id for link in m.links} <= ours for m in merged)

    spans = receiver.wait_for(merged_and_ended)
    waits = {s.span_id: s for s in spans if s.name == "batching queue" and s.trace_id in ours}
    merged = [
        s
        for s in spans
        if s.kind == "CLIENT" and len(s.links) >= 2 and {lk.trace_id for lk in s.links} <= ours
    ]
    servers = {s.span_id: s for s in spans if s.kind == "SERVER" and s.trace_id in ours}
    for call in merged:
        # A link to each request's wait, and the call is beside one of them in its trace.
        assert {link.span_id for link in call.links} <= set(waits)
        assert call.attributes["gateway.batch.requests"] == len(call.links)
        assert call.parent_span_id in servers
        assert servers[call.parent_span_id].trace_id == call.trace_id
        for link in call.links:
            wait = waits[link.span_id]
            assert wait.parent_span_id in servers  # where the request waited, in its trace
            # ... and which call served it: its wait links back.
            assert [(lk.trace_id, lk.span_id) for lk in wait.links] == [
                (call.trace_id, call.span_id)
            ]
            assert wait.end_ns <= call.start_ns
    # Each merged call's context is what went upstream with it.
    sent = {r.headers["traceparent"] for r in upstream.embedding_requests()}
    assert {f"00-{c.trace_id}-{c.span_id}-01" for c in merged} <= sent
    assert_nothing_secret(spans)


def test_a_retry_and_a_hedge_are_spans_with_their_own_calls_under_them(
    gateway: GatewayProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    upstream.add_fault(Fault.http_status(500))
    trace_id, _, traceparent = new_context()
    embed(gateway, CLIENT_KEY, "retried", texts("retry"), traceparent=traceparent)
    spans = [
        s
        for s in receiver.wait_for(in_trace(trace_id, "retry", *["embeddings up-retried"] * 2))
        if s.trace_id == trace_id
    ]
    server, retry = one(spans, kind="SERVER"), one(spans, name="retry")
    failed, answered = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    assert failed.parent_span_id == retry.parent_span_id == server.span_id
    assert failed.error and failed.attributes["error.type"] == "server"
    assert retry.attributes["gateway.retry.attempt"] == 2
    assert answered.parent_span_id == retry.span_id and not answered.error
    assert retry.start_ns <= failed.end_ns + 1_000_000  # from the start of its backoff

    upstream.add_fault(Fault.hang(5))  # the first call hangs: hedged on the second route
    trace_id, _, traceparent = new_context()
    embed(gateway, CLIENT_KEY, "hedged", texts("hedge"), traceparent=traceparent)
    spans = [
        s
        for s in receiver.wait_for(in_trace(trace_id, "hedge", *["embeddings up-hedged"] * 2))
        if s.trace_id == trace_id
    ]
    server, hedge = one(spans, kind="SERVER"), one(spans, name="hedge")
    primary = one(spans, kind="CLIENT", parent_span_id=server.span_id)
    second = one(spans, kind="CLIENT", parent_span_id=hedge.span_id)
    assert hedge.parent_span_id == server.span_id
    assert hedge.attributes == {"gateway.provider": "up2", "gateway.hedge.won": True}
    assert primary.attributes["gateway.provider"] == "up"
    assert primary.attributes["gateway.cancelled"] is True  # the hedge won: cut short
    assert second.attributes["gateway.provider"] == "up2"
    assert_nothing_secret(spans)


def test_pacing_and_bulk_lane_waits_are_spans_of_the_request_that_waited(
    gateway: GatewayProcess, receiver: OTLPReceiver, upstream: FakeUpstream, keys: dict[str, str]
) -> None:
    # 2 calls a second: back to back, the second waits for its slot.
    embed(gateway, CLIENT_KEY, "paced", texts("first"))
    trace_id, _, traceparent = new_context()
    embed(gateway, CLIENT_KEY, "paced", texts("second"), traceparent=traceparent)
    spans = [
        s
        for s in receiver.wait_for(in_trace(trace_id, "pacing wait", "embeddings up-paced"))
        if s.trace_id == trace_id
    ]
    server, wait = one(spans, kind="SERVER"), one(spans, name="pacing wait")
    client = one(spans, kind="CLIENT")
    assert wait.parent_span_id == client.parent_span_id == server.span_id
    assert wait.attributes == {"gateway.provider": "paced", "gateway.lane": "interactive"}
    assert wait.ms > 100 and wait.end_ns <= client.start_ns

    # A bulk key's chunks hold one of the route's two call slots; the rest wait in its lane.
    upstream.latency = 0.5
    contexts = [new_context() for _ in range(3)]

    async def burst() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.url}/v1/embeddings",
                        headers={"authorization": f"Bearer {keys['bulk']}", "traceparent": tp},
                        json={"model": "bulk", "input": text},
                    )
                    for (_, _, tp), text in zip(contexts, texts("x", "y", "z"), strict=True)
                )
            )

    asyncio.run(burst())
    ours = {trace_id for trace_id, _, _ in contexts}
    spans = receiver.wait_for(
        lambda spans: (
            {s.trace_id for s in spans if s.kind == "SERVER"} >= ours
            and any(s.name == "batching queue" and s.trace_id in ours for s in spans)
        )
    )
    waits = [s for s in spans if s.name == "batching queue" and s.trace_id in ours]
    assert all(w.attributes == {"gateway.lane": "bulk"} for w in waits)
    assert all(len(w.links) == 1 for w in waits)  # to the call that carried it
    assert_nothing_secret(spans, *keys.values())


def test_an_unsampled_request_exports_nothing_yet_logs_and_propagates_its_context(
    gateway: GatewayProcess, receiver: OTLPReceiver, upstream: FakeUpstream
) -> None:
    trace_id, _, traceparent = new_context(sampled=False)
    response = embed(gateway, CLIENT_KEY, "m", texts("unsampled"), traceparent=traceparent)
    # A sampled request after it: once its spans are in, the unsampled one's would be too.
    marker, _, sampled = new_context()
    embed(gateway, CLIENT_KEY, "m", texts("sampled"), traceparent=sampled)
    spans = receiver.wait_for(in_trace(marker, "POST /v1/embeddings", "embeddings up-m"))
    assert not [s for s in spans if s.trace_id == trace_id]
    first = upstream.embedding_requests()[0]
    assert first.headers["traceparent"].startswith(f"00-{trace_id}-")
    assert first.headers["traceparent"].endswith("-00")  # the caller's decision, passed on
    (line,) = [
        line
        for line in log_lines(gateway)
        if line.get("request_id") == response.headers["x-request-id"]
    ]
    assert line["trace_id"] == trace_id and line["trace_sampled"] is False


def test_spans_still_queued_are_exported_when_the_workers_stop(
    registry: Path, receiver: OTLPReceiver, redis_server: RedisServer
) -> None:
    service = f"{SERVICE}-stopping"
    env = gateway_env(
        registry,
        redis_server.url,
        WORKERS="2",
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="600000",  # nothing leaves before the workers stop
    )
    contexts = [new_context() for _ in range(6)]
    with GatewayProcess(env) as process:
        for (_, _, traceparent), text in zip(contexts, texts(*"abcdef"), strict=True):
            embed(process, CLIENT_KEY, "m", [text], traceparent=traceparent, connection="close")
        assert not [s for s in receiver.spans() if s.resource["service.name"] == service]
    ours = {trace_id for trace_id, _, _ in contexts}
    receiver.wait_for(
        lambda spans: {s.trace_id for s in spans if s.kind == "SERVER"} >= ours, timeout=5
    )


def test_at_a_ratio_each_new_trace_is_sampled_or_not_and_its_ids_agree_everywhere(
    registry: Path, receiver: OTLPReceiver, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    # The decision is made before the SDK is asked (app/tracing/sampling.py): an unsampled
    # request makes no span, yet logs its IDs and sends them upstream, as the SDK would have.
    service = f"{SERVICE}-ratio"
    env = gateway_env(
        registry,
        redis_server.url,
        OTEL_SERVICE_NAME=service,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.5",
    )
    inputs = texts(*(str(i) for i in range(24)))
    with GatewayProcess(env) as process:
        ids = [embed(process, CLIENT_KEY, "m", [text]).headers["x-request-id"] for text in inputs]
    lines = {line.get("request_id"): line for line in log_lines(process)}  # all written now
    calls = {}
    for call in upstream.embedding_requests():
        assert call.json is not None
        calls[call.json["input"][0]] = call.headers["traceparent"]
    sampled = {lines[rid]["trace_id"] for rid in ids if lines[rid]["trace_sampled"]}
    assert 0 < len(sampled) < len(ids)  # 2^-24 to fail by chance, either way
    spans = receiver.wait_for(
        lambda spans: (
            {s.trace_id for s in spans if s.resource["service.name"] == service} >= sampled
        )
    )
    ours = [s for s in spans if s.resource["service.name"] == service]
    # Nothing of an unsampled request (the start-up's health checks are requests too).
    embeddings = {s.trace_id for s in ours if s.name == "POST /v1/embeddings"}
    assert embeddings == sampled
    for rid, text in zip(ids, inputs, strict=True):
        line = lines[rid]
        version, trace_id, parent, flags = calls[text].split("-")
        assert (version, trace_id) == ("00", line["trace_id"])
        if line["trace_sampled"]:
            # A new trace's IDs are random (flag 02), and this one is sampled (01).
            client = one(ours, kind="CLIENT", trace_id=trace_id)
            server = one(ours, kind="SERVER", trace_id=trace_id)
            assert (parent, flags) == (client.span_id, "03")
            assert server.span_id == line["span_id"] == client.parent_span_id
        else:  # the SERVER span the SDK did not have to make: its IDs, unsampled
            assert (parent, flags) == (line["span_id"], "02")
