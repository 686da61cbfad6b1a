"""The Batch API in traces, across real sockets: a traced gateway process (its batches in Redis)
exports OTLP/HTTP to a real receiver (tests/otlp_receiver.py), and the OpenAI SDK creates a small
batch with a caller's `traceparent`.

Checked: the batch's `batch` span is in the creating request's trace, under its SERVER span (so
under the caller's span); its validation and each of its chunks is a trace of its own, whose
root links that span; each chunk's embedding work is under its root, down to the upstream calls'
CLIENT spans (a call merged for several chunks sits in one chunk's trace and links the others'
waits); nothing of a line (input, custom_id) and no key in any span.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.batch_support import FAST_BATCHES, results, texts_file, upload, wait_for
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream
from tests.harness import GatewayProcess
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan, trace_tree
from tests.redis_server import RedisServer
from tests.tracing_support import (
    UPSTREAM_KEY,
    assert_nothing_secret,
    gateway_env,
    new_context,
    one,
    texts,
    write_tracing_registry,
)

LINES = 10  # 4 lines a chunk (FAST_BATCHES): 3 chunks
CUSTOM_ID = "private-custom-id"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: FakeUpstream,
    receiver: OTLPReceiver,
    redis_server: RedisServer,
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("batches-tracing")
    registry: Path = write_tracing_registry(tmp / "models.yaml", upstream)
    env = gateway_env(
        registry,
        redis_server.url,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        BATCH_DIR=str(tmp / "files"),
        BATCH_KEY_PREFIX=f"egw:batch-tracing-{uuid.uuid4().hex[:8]}:",
        **FAST_BATCHES,
    )
    with GatewayProcess(env) as process:
        yield process


def _ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """The names from `span`'s parent up to its trace's root."""
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    names = []
    while span.parent_span_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def test_each_chunk_is_a_trace_linked_to_the_batch_with_its_embedding_work_under_it(
    gateway: GatewayProcess, receiver: OTLPReceiver
) -> None:
    client = OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    trace_id, caller_span, traceparent = new_context()
    inputs = [texts(f"line {n} a", f"line {n} b") for n in range(LINES)]
    content = texts_file("bulk", inputs).replace(b'"req-', f'"{CUSTOM_ID}-'.encode())
    file_id = upload(client, content)
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        extra_headers={"traceparent": traceparent},
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed", done
    assert len(results(client, done)[0]) == LINES

    def exported(spans: list[ReceivedSpan]) -> bool:
        chunks = [s for s in spans if s.name == "batch chunk"]
        ended = {s.trace_id for s in spans if s.kind == "CLIENT"}
        return (
            any(s.name == "batch" for s in spans)
            and any(s.name == "batch validation" for s in spans)
            and len(chunks) == 3
            and bool(ended)
        )

    spans = receiver.wait_for(exported, timeout=15)
    # The batch's span: in the caller's trace, under the request that created the batch.
    server = one(spans, trace_id=trace_id, kind="SERVER")
    assert server.name == "POST /v1/batches" and server.parent_span_id == caller_span
    mark = one(spans, name="batch")
    assert mark.trace_id == trace_id and mark.parent_span_id == server.span_id
    assert mark.attributes == {"gateway.batch.id": batch.id}
    to_batch = (mark.trace_id, mark.span_id)

    validation = one(spans, name="batch validation")
    assert validation.parent_span_id == "" and validation.trace_id != trace_id
    assert [(link.trace_id, link.span_id) for link in validation.links] == [to_batch]
    assert validation.attributes == {
        "gateway.batch.id": batch.id,
        "gateway.batch.lines": LINES,
        "gateway.batch.inputs": 2 * LINES,
        "gateway.batch.chunks": 3,
        "gateway.batch.errors": 0,
    }

    # A trace per chunk: a root linked to the batch's span, with what its lines did.
    chunks = sorted(
        (s for s in spans if s.name == "batch chunk"),
        key=lambda s: s.attributes["gateway.batch.chunk"],
    )
    assert len({s.trace_id for s in chunks}) == 3
    assert trace_id not in {s.trace_id for s in chunks} and validation.trace_id not in {
        s.trace_id for s in chunks
    }
    for index, (chunk, lines) in enumerate(zip(chunks, (4, 4, 2), strict=True)):
        assert chunk.parent_span_id == "" and not chunk.error
        assert [(link.trace_id, link.span_id) for link in chunk.links] == [to_batch]
        assert chunk.attributes == {
            "gateway.batch.id": batch.id,
            "gateway.batch.chunk": index,
            "gateway.batch.lines": lines,
            "gateway.batch.inputs": 2 * lines,
            "gateway.batch.completed": lines,
            "gateway.batch.failed": 0,
            "gateway.batch.stopped": 0,
            "gateway.batch.first_completion": True,
        }

    # The upstream calls: each in a chunk's trace, under its root; a chunk whose lines rode a
    # call made for another chunk shows its wait, linked to that call.
    chunk_traces = {s.trace_id for s in chunks}
    calls = [s for s in spans if s.kind == "CLIENT"]
    assert calls and all(call.trace_id in chunk_traces for call in calls)
    for call in calls:
        assert call.name == "embeddings up-bulk"
        assert _ancestors(call, spans)[-1] == "batch chunk"
    call_ids = {(call.trace_id, call.span_id) for call in calls}
    for chunk in chunks:
        mine = [s for s in spans if s.trace_id == chunk.trace_id]
        waits = [s for s in mine if s.name == "batching queue"]
        assert any(s.kind == "CLIENT" for s in mine) or any(
            (link.trace_id, link.span_id) in call_ids for wait in waits for link in wait.links
        ), trace_tree(spans, chunk.trace_id)
        assert all(_ancestors(wait, spans)[-1] == "batch chunk" for wait in waits)

    assert_nothing_secret(spans, CUSTOM_ID)
