"""The Batch API on real sockets, with the OpenAI Python SDK as the client: a gateway without Redis
(its batches in SQLite, its files in a directory) and a fake upstream.

Every line's output is the synchronous endpoint's answer to the same body, byte for byte once
parsed; a line the upstream rejects fails alone; what validation refuses fails the batch with
line numbers; bad requests get 4xx in OpenAI's error shape, never a 500; files and batches are
invisible to other keys; cancel and expiry keep the lines done and name every other line once.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.batch_support import (
    FAST_BATCHES,
    file_lines,
    jsonl,
    line,
    results,
    start,
    texts_file,
    upload,
    wait_for,
)
from tests.fakes import FakeUpstream, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry

UPSTREAM_KEY = "batches-upstream-secret-01"
KEY, OTHER_KEY = "sk-batch-test-key-0001", "sk-batch-test-key-0002"
DIMS = 16
MAX_FILE = 256 * 1024


class Clock:
    """The Batch API's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(upstream: FakeUpstream) -> None:
    upstream.clear()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream: FakeUpstream, clock: Clock) -> Iterator[ThreadedGateway]:
    tmp = tmp_path_factory.mktemp("batches")
    provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
    route = {"provider": "up", "model": "up-m", "accepts_token_ids": True}
    models = {
        "m": model_entry([route], dimensions=DIMS, supports_dimensions=True),
        "other": model_entry([{"provider": "up", "model": "up-other"}], dimensions=DIMS),
    }
    path = write_registry(tmp / "models.yaml", {"up": provider}, models)
    with ThreadedGateway(
        wall_clock=clock,
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=f"{KEY},{OTHER_KEY}",
        BATCH_DIR=str(tmp / "files"),
        BATCH_DB=str(tmp / "batches.db"),
        BATCH_MAX_FILE_BYTES=MAX_FILE,
        BATCH_MAX_LINES=60,
        RATE_LIMIT_PER_SECOND=0,
        AUTH_FAILURES_PER_MINUTE=0,
        **FAST_BATCHES,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway: ThreadedGateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def other(gateway: ThreadedGateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/api/v1", api_key=OTHER_KEY, max_retries=0)


BODIES = [
    {"model": "m", "input": "a single string"},
    {"model": "m", "input": ["two", "strings"], "encoding_format": "float"},
    {"model": "m", "input": [1, 2, 3, 4]},
    {"model": "m", "input": [[5, 6], [7, 8, 9]], "encoding_format": "base64"},
    {"model": "m", "input": ["shorter"], "dimensions": 8, "user": "u-1"},
    {"model": "m", "input": "for search", "input_type": "query"},
    {"model": "m", "input": ["a single string", "two"]},  # duplicates of other lines' inputs
]


def test_every_output_line_is_the_endpoints_own_answer(client: OpenAI, gateway, upstream):
    content = jsonl(line(f"line-{n}", body) for n, body in enumerate(BODIES))
    batch = wait_for(client, start(client, content, metadata={"team": "search"}).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 7, "completed": 7, "failed": 0}
    assert batch.metadata == {"team": "search"}
    assert batch.model == "m"
    assert batch.error_file_id is None
    assert batch.completed_at >= batch.finalizing_at >= batch.in_progress_at >= batch.created_at
    out, err = results(client, batch)
    assert err == {}
    total = 0
    for n, body in enumerate(BODIES):
        entry = out[f"line-{n}"]
        assert entry["id"].startswith("batch_req_") and entry["error"] is None
        assert entry["response"]["status_code"] == 200
        sync = httpx.post(
            f"{gateway.url}/v1/embeddings",
            json=body,
            headers={"authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        assert entry["response"]["body"] == sync.json()  # vectors and usage alike
        total += sync.json()["usage"]["prompt_tokens"]
        for item in entry["response"]["body"]["data"]:
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if inputs and isinstance(inputs[0], int):
                inputs = [inputs]
            expected = fake_vector("up-m", inputs[item["index"]], DIMS, body.get("dimensions"))
            vector = item["embedding"]
            if isinstance(vector, str):
                vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
            np.testing.assert_array_equal(np.asarray(vector, dtype=np.float32), expected)
    assert batch.usage is not None
    assert batch.usage.input_tokens == batch.usage.total_tokens == total
    assert batch.usage.output_tokens == 0
    # The lines went upstream in merged calls, not one call per line.
    assert len(upstream.embedding_requests()) < len(BODIES) * 2


def test_a_poisoned_line_fails_alone(client: OpenAI, upstream: FakeUpstream):
    upstream.reject_inputs = {"poison"}
    texts = [[f"fine {n}"] for n in range(9)]
    texts[4] = ["poison"]
    batch = wait_for(client, start(client, texts_file("m", texts)).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 9, "completed": 8, "failed": 1}
    out, err = results(client, batch)
    assert set(out) == {f"req-{n}" for n in range(9)} - {"req-4"}
    failed = err["req-4"]
    assert failed["error"] is None
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["code"] == "upstream_rejected_input"


def test_validation_fails_the_batch_with_every_bad_line(client: OpenAI):
    good = {"model": "m", "input": "fine"}
    content = jsonl(
        [
            line("a", good),
            b"{not json",
            {"method": "POST", "url": "/v1/embeddings", "body": good},
            line("a", good),
            line("d", good, url="/v1/chat/completions"),
            line("e", {"model": "nope", "input": "x"}),
            line("f", {"model": "m", "input": ["x"] * 2049}),
            line("g" * 513, good),
            line("h", {"model": "m", "input": ""}),
            line("i", {"model": "other", "input": "x"}),
        ]
    )
    batch = wait_for(client, start(client, content).id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    found = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "missing_required_parameter", "custom_id"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "invalid_url", "url"),
        (6, "model_not_found", "body.model"),
        (7, "invalid_request", "body.input"),
        (8, "invalid_custom_id", "custom_id"),
        (9, "invalid_request", "body.input"),
        (10, "model_mismatch", "body.model"),
    ]
    assert "2048" in batch.errors.data[5].message


def test_limits_and_empty_files_fail_validation(client: OpenAI):
    empty = wait_for(client, start(client, b"\n\n").id)
    assert [(e.code, e.line) for e in empty.errors.data] == [("empty_file", None)]
    many = wait_for(client, start(client, texts_file("m", [["x"]] * 61)).id)
    assert [(e.code, e.line) for e in many.errors.data] == [("too_many_tasks", 61)]
    unknown = client.batches.create(
        input_file_id="file-doesnotexist", endpoint="/v1/embeddings", completion_window="24h"
    )
    assert unknown.status == "failed"
    assert unknown.errors.data[0].code == "invalid_request"
    assert unknown.errors.data[0].line is None


def _status(call) -> int:
    try:
        call()
    except openai.APIStatusError as error:
        assert error.response.headers["content-type"] == "application/json"
        assert set(error.body) >= {"message", "type", "param", "code"}
        return error.status_code
    raise AssertionError("no error")


def test_bad_requests_get_clear_errors(client: OpenAI, gateway: ThreadedGateway):
    file_id = upload(client, texts_file("m", [["x"]]))

    def create(**changed: object) -> object:
        params = {
            "input_file_id": file_id,
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
        }
        return client.batches.create(**{**params, **changed})  # type: ignore[arg-type]

    def upload_as(name: str, content: bytes, purpose: str = "batch") -> object:
        return client.files.create(file=(name, content), purpose=purpose)  # type: ignore[arg-type]

    assert _status(lambda: create(endpoint="/v1/chat/completions")) == 400
    assert _status(lambda: create(completion_window="1y")) == 400
    assert _status(lambda: create(metadata={"a": 1})) == 400
    assert _status(lambda: upload_as("a.jsonl", b"{}", purpose="fine-tune")) == 400
    assert _status(lambda: upload_as("a.txt", b"{}")) == 400
    assert _status(lambda: upload_as("a.jsonl", b"\xff\xfe")) == 400
    too_big = b"x" * (MAX_FILE + 1)
    assert _status(lambda: upload_as("a.jsonl", too_big)) == 413
    assert _status(lambda: client.files.retrieve("file-nope")) == 404
    assert _status(lambda: client.batches.retrieve("batch_nope")) == 404
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"{gateway.url}/v1/files"
    broken = httpx.post(
        url,
        headers={**headers, "content-type": "multipart/form-data; boundary=xyz"},
        content=b"--xyz\r\nContent-Disposition: form-data; name=file; filename=a.jsonl\r\n\r\n{}",
    )
    assert broken.status_code == 400 and "malformed" in broken.json()["error"]["message"]
    no_file = httpx.post(url, headers=headers, files={"purpose": (None, "batch")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    not_multipart = httpx.post(url, headers=headers, json={"purpose": "batch"})
    assert not_multipart.status_code == 400
    bad_json = httpx.post(f"{gateway.url}/v1/batches", headers=headers, content=b"{")
    assert bad_json.status_code == 400
    # The files themselves: the rejected uploads were never stored, so never listed.
    assert [f.id for f in client.files.list(purpose="batch") if f.bytes > MAX_FILE] == []


def test_a_file_over_the_cap_is_refused_before_its_body_is_read(gateway: ThreadedGateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + b"Content-Length: %d\r\n\r\n" % (MAX_FILE * 2)
        )  # fmt: skip
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_cancelling_a_finished_batch_is_a_409_the_sdk_does_not_retry(client: OpenAI, upstream):
    batch = wait_for(client, start(client, texts_file("m", [["x"]])).id)
    assert batch.status == "completed"
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.cancel(batch.id)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "completed" in caught.value.message


def test_files_and_batches_belong_to_their_key(client: OpenAI, other: OpenAI):
    batch = wait_for(client, start(client, texts_file("m", [["mine"]])).id)
    file_id = batch.input_file_id
    for call in (
        lambda: other.files.retrieve(file_id),
        lambda: other.files.content(file_id),
        lambda: other.files.delete(file_id),
        lambda: other.files.retrieve(batch.output_file_id),
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
    ):
        assert _status(call) == 404
    assert file_id not in {f.id for f in other.files.list()}
    assert batch.id not in {b.id for b in other.batches.list()}
    # Another key's file as a batch's input: as if it did not exist.
    theirs = other.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert theirs.status == "failed" and theirs.errors.data[0].param == "input_file_id"
    # The owner still has everything.
    assert client.files.retrieve(file_id).id == file_id
    assert client.files.content(batch.output_file_id).content


def test_listings_page_as_the_sdks_auto_paginate(client: OpenAI, other: OpenAI):
    ids = [upload(other, texts_file("m", [[f"page {n}"]])) for n in range(5)]
    listed = [f.id for f in other.files.list(limit=2, purpose="batch")]
    assert listed[: len(ids)] == ids[::-1]  # newest first
    assert [f.id for f in other.files.list(limit=2, order="asc")][-5:] == ids
    assert other.files.list(after=ids[0], order="desc").data == []
    page = other.files.list(limit=2)
    assert page.has_more is True and len(page.data) == 2
    batches = [
        other.batches.create(input_file_id=i, endpoint="/v1/embeddings", completion_window="1h")
        for i in ids
    ]
    assert [b.id for b in other.batches.list(limit=2)][:5] == [b.id for b in batches[::-1]]
    raw = httpx.get(
        f"{other.base_url}batches",
        params={"limit": 1},
        headers={"authorization": f"Bearer {OTHER_KEY}"},
    )
    assert raw.headers["content-type"] == "application/json"
    assert set(raw.json()) == {"object", "data", "first_id", "last_id", "has_more"}
    deleted = other.files.delete(ids[0])
    assert deleted.deleted is True and deleted.id == ids[0]
    assert ids[0] not in {f.id for f in other.files.list()}
    for batch in batches:
        wait_for(other, batch.id)


def test_cancel_stops_the_batch_and_keeps_what_is_done(client: OpenAI, upstream: FakeUpstream):
    upstream.latency = 0.3
    texts = [[f"cancel me {n}"] for n in range(40)]
    batch = start(client, texts_file("m", texts))
    wait_for(client, batch.id, ("in_progress",))
    deadline = time.monotonic() + 10
    while client.batches.retrieve(batch.id).request_counts.completed == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    began = time.monotonic()
    done = wait_for(client, batch.id, ("cancelled",), timeout=10)
    assert time.monotonic() - began < 5
    calls = len(upstream.embedding_requests())
    time.sleep(0.5)
    assert len(upstream.embedding_requests()) == calls  # no new upstream call after the cancel
    out, err = results(client, done)
    assert set(out) | set(err) == {f"req-{n}" for n in range(40)}
    assert 0 < len(out) < 40
    assert {e["error"]["code"] for e in err.values()} == {"batch_cancelled"}
    assert all(e["response"] is None for e in err.values())
    # As OpenAI's: lines never run are in the error file, not counted as failed.
    assert done.request_counts.completed == len(out) and done.request_counts.failed == 0
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: answered as it is


def test_expiry_with_a_moved_clock(client: OpenAI, upstream: FakeUpstream, clock: Clock):
    upstream.latency = 0.3
    texts = [[f"expire me {n}"] for n in range(40)]
    batch = start(client, texts_file("m", texts), window="30m")
    assert batch.expires_at - batch.created_at == 1800
    wait_for(client, batch.id, ("in_progress",))
    deadline = time.monotonic() + 10
    while client.batches.retrieve(batch.id).request_counts.completed == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    clock.offset += 1801
    try:
        done = wait_for(client, batch.id, ("expired",), timeout=10)
    finally:
        clock.offset = 0.0  # the module's later batches run on real time again
    assert done.expired_at is not None
    out, err = results(client, done)
    assert set(out) | set(err) == {f"req-{n}" for n in range(40)}
    assert 0 < len(out) < 40
    assert {e["error"]["code"] for e in err.values()} == {"batch_expired"}
    assert done.request_counts.completed == len(out)
    assert done.request_counts.failed == len(err)


def test_file_content_is_the_exact_upload(client: OpenAI):
    content = texts_file("m", [["ünïcödé 🚀"]]) + b"\n\n"
    file_id = upload(client, content, name="dir/sub/input.JSONL")
    found = client.files.retrieve(file_id)
    assert (found.filename, found.bytes, found.purpose, found.status) == (
        "input.JSONL",
        len(content),
        "batch",
        "processed",
    )
    assert found.expires_at - found.created_at == 30 * 86_400
    assert client.files.content(file_id).content == content
    timed = client.files.create(
        file=("t.jsonl", content),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert timed.expires_at - timed.created_at == 3600
    assert file_lines(client, file_id)[0]["body"]["input"] == ["ünïcödé 🚀"]


def _sample(gateway: ThreadedGateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name} {labels} is not exported")


def test_metrics_count_batches_and_lines_by_outcome(client: OpenAI, gateway, upstream):
    lines = "embeddings_gateway_batch_lines_total"
    before = {o: _sample(gateway, lines, outcome=o) for o in ("completed", "failed")}
    finished = _sample(gateway, "embeddings_gateway_batches_finished_total", status="completed")
    upstream.reject_inputs = {"bad input"}
    wait_for(client, start(client, texts_file("m", [["good input"], ["bad input"]])).id)
    assert _sample(gateway, lines, outcome="completed") == before["completed"] + 1
    assert _sample(gateway, lines, outcome="failed") == before["failed"] + 1
    status = "completed"
    assert (
        _sample(gateway, "embeddings_gateway_batches_finished_total", status=status) == finished + 1
    )
    assert _sample(gateway, "embeddings_gateway_batch_queue_depth") >= 0
    assert _sample(gateway, "embeddings_gateway_batch_oldest_pending_chunk_age_seconds") >= 0


def test_an_upload_may_outlast_the_body_timeout_while_it_keeps_the_minimum_rate(
    tmp_path, upstream: FakeUpstream
):
    provider = {"type": "nanogpt", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY}
    models = {"m": model_entry([{"provider": "up", "model": "up-m"}], dimensions=DIMS)}
    with ThreadedGateway(
        MODELS_CONFIG=str(write_registry(tmp_path / "models.yaml", {"up": provider}, models)),
        GATEWAY_API_KEYS=KEY,
        BATCH_DIR=str(tmp_path / "files"),
        BATCH_DB=str(tmp_path / "batches.db"),
        BODY_TIMEOUT_SECONDS=0.3,
        BATCH_UPLOAD_MIN_BYTES_PER_SECOND=1000,
        RATE_LIMIT_PER_SECOND=0,
    ) as gateway:
        head = (
            b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.jsonl"\r\n\r\n'
        )
        pieces = [head, *[b"x" * 2000 for _ in range(6)], b"\r\n--b--\r\n"]

        def slowly():  # about 1.2 s in all: four body timeouts, well above 1000 bytes a second
            for piece in pieces:
                yield piece
                time.sleep(0.2)

        headers = {
            "authorization": f"Bearer {KEY}",
            "content-type": "multipart/form-data; boundary=b",
        }
        uploaded = httpx.post(f"{gateway.url}/v1/files", headers=headers, content=slowly())
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["bytes"] == 12_000
        # Any other body still has BODY_TIMEOUT_SECONDS, whatever its rate.
        embedded = httpx.post(
            f"{gateway.url}/v1/embeddings",
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            content=slowly(),
        )
        assert embedded.status_code == 408
