"""Self-tests of the fake upstream, across real sockets with httpx."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fakes import FakeUpstream, Fault, fake_token_count, fake_vector

KEY = "sk-test-123"
MODEL = "text-embedding-3-small"
BIG_MODEL = "big-model"
DIMS = {BIG_MODEL: 64}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai", api_key=KEY, dims=DIMS) as server:
        yield server


@pytest.fixture(scope="module")
def nugen_server() -> Iterator[FakeUpstream]:
    with FakeUpstream("nugen", api_key=KEY, dims=DIMS) as server:
        yield server


@pytest.fixture
def openai(openai_server: FakeUpstream) -> Iterator[FakeUpstream]:
    openai_server.clear()
    yield openai_server
    openai_server.clear()


@pytest.fixture
def nugen(nugen_server: FakeUpstream) -> Iterator[FakeUpstream]:
    nugen_server.clear()
    yield nugen_server
    nugen_server.clear()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def post(
    client: httpx.Client, server: FakeUpstream, body: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return client.post(server.base_url + _suffix(server), json=body, **kwargs)


def _suffix(server: FakeUpstream) -> str:
    return "/embeddings" if server.protocol == "openai" else "/inference/embeddings"


# -- OpenAI protocol -----------------------------------------------------------------------------


def test_openai_float_round_trip(client: httpx.Client, openai: FakeUpstream) -> None:
    texts = ["hello world", "the quick brown fox"]
    r = post(client, openai, {"model": BIG_MODEL, "input": texts, "dimensions": 8, "user": "u"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == BIG_MODEL
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    for i, (item, text) in enumerate(zip(body["data"], texts, strict=True)):
        assert item == {"object": "embedding", "index": i, "embedding": item["embedding"]}
        expected = fake_vector(BIG_MODEL, text, 64, 8)
        assert expected.dtype == np.float32 and expected.shape == (8,)
        # Exact: the wire carries the float64 repr of each float32 value.
        assert item["embedding"] == expected.astype(np.float64).tolist()
        assert math.isclose(float(np.linalg.norm(expected)), 1.0, rel_tol=1e-6)


def test_openai_base64_round_trip_and_token_inputs(
    client: httpx.Client, openai: FakeUpstream
) -> None:
    cases: list[tuple[Any, list[Any]]] = [
        ("one", ["one"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[5, 6], [7]], [[5, 6], [7]]),
    ]
    for value, items in cases:
        url = openai.url + "/api/v1/embeddings"
        body = {"model": MODEL, "input": value, "encoding_format": "base64"}
        r = client.post(url, json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert len(data) == len(items)
        for item, expected_item in zip(data, items, strict=True):
            vec = np.frombuffer(base64.b64decode(item["embedding"], validate=True), "<f4")
            np.testing.assert_array_equal(vec, fake_vector(MODEL, expected_item, 16))
        tokens = sum(fake_token_count(i) for i in items)
        assert r.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_openai_validation_errors(client: httpx.Client, openai: FakeUpstream) -> None:
    bad: list[dict[str, Any]] = [
        {"model": MODEL, "input": ""},
        {"model": MODEL, "input": []},
        {"model": MODEL, "input": ["a", ""]},
        {"model": MODEL, "input": "a", "dimensions": 17},
        {"model": MODEL, "input": "a", "dimensions": 0},
        {"model": MODEL, "input": "a", "encoding_format": "int8"},
        {"input": "a"},
    ]
    for body in bad:
        r = post(client, openai, body)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] is None


# -- Nugen protocol ------------------------------------------------------------------------------


def test_nugen_shape_and_extra_fields(client: httpx.Client, nugen: FakeUpstream) -> None:
    body = {"model": MODEL, "input": ["a b", "c"], "encoding_format": "base64", "user": "x"}
    r = post(client, nugen, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert list(out) == ["id", "object", "data", "model", "created", "usage"]
    assert out["id"].startswith("embed-")
    assert out["object"] == "embedding"
    assert out["model"] == MODEL
    assert isinstance(out["created"], float)
    assert out["usage"] == {"total_tokens": 3}
    assert [list(d) for d in out["data"]] == [["object", "embedding", "index"]] * 2
    for i, text in enumerate(["a b", "c"]):
        assert out["data"][i]["index"] == i
        assert out["data"][i]["embedding"] == fake_vector(MODEL, text, 16).tolist()
    (rec,) = nugen.embedding_requests()
    assert rec.json == body
    assert rec.path == "/api/v3/inference/embeddings"
    assert rec.headers["authorization"] == f"Bearer {KEY}"


def test_nugen_rejects_token_ids_and_bad_input(client: httpx.Client, nugen: FakeUpstream) -> None:
    for value in ([1, 2, 3], [[1, 2]]):
        r = post(client, nugen, {"model": MODEL, "input": value})
        assert r.status_code == 400
        assert r.json() == {"detail": "input must be a string or list of strings"}
    for body in ({"model": MODEL, "input": ""}, {"model": MODEL, "input": "a", "dimensions": 99}):
        r = post(client, nugen, body)
        assert r.status_code == 400
        assert isinstance(r.json()["detail"], str)


def test_nugen_dimensions(client: httpx.Client, nugen: FakeUpstream) -> None:
    r = post(client, nugen, {"model": BIG_MODEL, "input": "x", "dimensions": 5})
    assert r.status_code == 200
    assert r.json()["data"][0]["embedding"] == fake_vector(BIG_MODEL, "x", 64, 5).tolist()


# -- Auth and recording --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["openai", "nugen"])
def test_auth(
    client: httpx.Client, openai: FakeUpstream, nugen: FakeUpstream, protocol: str
) -> None:
    server = openai if protocol == "openai" else nugen
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
        r = post(client, server, {"model": MODEL, "input": "a"}, headers=headers)
        assert r.status_code == 401
        assert "wrong-key" not in r.text
        message = r.json()["error"]["message"] if protocol == "openai" else r.json()["detail"]
        assert message == "Invalid API key"
    assert post(client, server, {"model": MODEL, "input": "a"}).status_code == 200
    assert len(server.requests) == 4


def test_recording(client: httpx.Client, openai: FakeUpstream) -> None:
    before = time.time()
    post(client, openai, {"model": MODEL, "input": "a"}, headers={**AUTH, "X-Trace": "t1"})
    r = client.get(openai.url + "/v1/models")
    assert r.status_code == 404 and "error" in r.json()
    client.post(openai.url + "/v1/embeddings", content=b"not json", headers=AUTH)
    assert [r.path for r in openai.requests] == ["/v1/embeddings", "/v1/models", "/v1/embeddings"]
    first, _, garbage = openai.requests
    assert first.headers["x-trace"] == "t1"
    assert first.json == {"model": MODEL, "input": "a"}
    assert before <= first.received_at <= time.time()
    assert garbage.json is None
    assert len(openai.embedding_requests()) == 2
    openai.clear()
    assert openai.requests == [] and openai.max_in_flight == 0


# -- Faults --------------------------------------------------------------------------------------


def test_fault_status_with_headers(
    client: httpx.Client, openai: FakeUpstream, nugen: FakeUpstream
) -> None:
    openai.add_fault(Fault.http_status(429, {"Retry-After": "1"}))
    r = post(client, openai, {"model": MODEL, "input": "a"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["message"] == "upstream fault 429"
    assert post(client, openai, {"model": MODEL, "input": "a"}).status_code == 200

    nugen.add_fault(Fault.http_status(503, {"retry-after-ms": "200"}))
    r = post(client, nugen, {"model": MODEL, "input": "a"})
    assert r.status_code == 503 and r.headers["retry-after-ms"] == "200"
    assert r.json() == {"detail": "upstream fault 503"}


def test_fault_queue_fifo_times_and_forever(client: httpx.Client, openai: FakeUpstream) -> None:
    openai.add_fault(Fault.http_status(500), times=2)
    openai.add_fault(Fault.http_status(502))
    body = {"model": MODEL, "input": "a"}
    assert [post(client, openai, body).status_code for _ in range(4)] == [500, 500, 502, 200]
    openai.add_fault("non_json", times=None)
    assert [post(client, openai, body).status_code for _ in range(3)] == [200] * 3
    openai.clear()
    assert post(client, openai, body).headers["content-type"].startswith("application/json")


def test_fault_rate_is_deterministic(client: httpx.Client, openai: FakeUpstream) -> None:
    body = {"model": MODEL, "input": "a"}
    runs = []
    for _ in range(2):
        openai.set_fault_rate(Fault.http_status(503), 0.5, seed=7)
        runs.append([post(client, openai, body).status_code for _ in range(20)])
    assert runs[0] == runs[1]
    assert 3 <= runs[0].count(503) <= 17
    openai.set_fault_rate(None, 0.0)
    assert post(client, openai, body).status_code == 200


def test_fault_non_json(client: httpx.Client, openai: FakeUpstream) -> None:
    openai.add_fault(Fault.non_json())
    r = post(client, openai, {"model": MODEL, "input": "a"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text == "<html>oops</html>"


@pytest.mark.parametrize("protocol", ["openai", "nugen"])
def test_body_faults(
    client: httpx.Client, openai: FakeUpstream, nugen: FakeUpstream, protocol: str
) -> None:
    server = openai if protocol == "openai" else nugen
    texts = ["a", "b", "c"]
    body = {"model": MODEL, "input": texts}
    expected = [fake_vector(MODEL, t, 16).astype(np.float64).tolist() for t in texts]

    server.add_fault(Fault.fewer_vectors())
    data = post(client, server, body).json()["data"]
    assert [d["embedding"] for d in data] == expected[:2]

    server.add_fault(Fault.wrong_dims())
    data = post(client, server, body).json()["data"]
    assert [d["embedding"] for d in data] == [e[:-1] for e in expected]

    server.add_fault(Fault.nan())
    r = post(client, server, body)
    assert r.status_code == 200 and b"NaN" in r.content
    data = json.loads(r.text)["data"]  # the stdlib accepts the NaN literal
    assert math.isnan(data[0]["embedding"][0])
    assert data[0]["embedding"][1:] == expected[0][1:]
    assert [d["embedding"] for d in data[1:]] == expected[1:]

    server.add_fault(Fault.shuffled())
    data = post(client, server, body).json()["data"]
    assert [d["index"] for d in data] == [2, 1, 0]
    assert [d["embedding"] for d in data] == expected[::-1]


def test_nan_fault_base64(client: httpx.Client, openai: FakeUpstream) -> None:
    openai.add_fault("nan")
    r = post(client, openai, {"model": MODEL, "input": "a", "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    assert np.isnan(vec[0]) and not np.isnan(vec[1:]).any()


@pytest.mark.parametrize("protocol", ["openai", "nugen"])
def test_fault_drop(
    client: httpx.Client, openai: FakeUpstream, nugen: FakeUpstream, protocol: str
) -> None:
    server = openai if protocol == "openai" else nugen
    server.add_fault(Fault.drop())
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        post(client, server, {"model": MODEL, "input": "a"})
    assert post(client, server, {"model": MODEL, "input": "a"}).status_code == 200
    assert len(server.embedding_requests()) == 2


def test_fault_truncated(client: httpx.Client, openai: FakeUpstream) -> None:
    openai.add_fault(Fault.truncated())
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        post(client, openai, {"model": BIG_MODEL, "input": ["a", "b"]})
    assert post(client, openai, {"model": MODEL, "input": "a"}).status_code == 200


def test_fault_hang_and_latency(client: httpx.Client, openai: FakeUpstream) -> None:
    openai.add_fault(Fault.hang(5.0))
    with pytest.raises(httpx.ReadTimeout):
        post(client, openai, {"model": MODEL, "input": "a"}, timeout=0.2)
    openai.add_fault(Fault.hang(0.1))
    start = time.monotonic()
    assert post(client, openai, {"model": MODEL, "input": "a"}).status_code == 200
    assert time.monotonic() - start >= 0.1

    openai.latency = 0.1
    start = time.monotonic()
    assert post(client, openai, {"model": MODEL, "input": "a"}).status_code == 200
    assert time.monotonic() - start >= 0.1


@pytest.mark.asyncio
async def test_max_in_flight(openai_server: FakeUpstream) -> None:
    server = openai_server
    server.clear()
    server.latency = 0.2
    async with httpx.AsyncClient(timeout=5.0, headers=AUTH) as ac:
        responses = await asyncio.gather(
            *(
                ac.post(server.embeddings_url, json={"model": MODEL, "input": f"t{i}"})
                for i in range(5)
            )
        )
    assert [r.status_code for r in responses] == [200] * 5
    assert server.max_in_flight == 5
    assert server.in_flight == 0
    server.clear()


def test_standalone_cli() -> None:
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "tests.fakes", "--protocol", "nugen", "--port", "0"]
    cmd += ["--dims", "32", "--key", KEY]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("listening on http://127.0.0.1:")
            url = line.removeprefix("listening on ") + "/api/v3/inference/embeddings"
            r = httpx.post(url, json={"model": MODEL, "input": "a"}, headers=AUTH, timeout=5.0)
            assert r.json()["data"][0]["embedding"] == fake_vector(MODEL, "a", 32).tolist()
        finally:
            proc.terminate()
            assert proc.wait(timeout=5) == 0


def test_canonical_input_decides_vector_and_usage(client: httpx.Client) -> None:
    def fold(item: Any) -> Any:
        return item.partition("|")[2] if isinstance(item, str) else item

    with FakeUpstream("openai", canonical_input=fold) as server:
        r = client.post(server.embeddings_url, json={"model": MODEL, "input": ["r1|a b", "r2|c"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["embedding"] for d in body["data"]] == [
        fake_vector(MODEL, text, 16).astype(np.float64).tolist() for text in ("a b", "c")
    ]
    assert body["usage"]["total_tokens"] == 3
