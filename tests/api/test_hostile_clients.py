"""Hostile clients against real gateways on 127.0.0.1: key guessing, unknown paths, huge and slow
headers, slow bodies, idle connections, too many connections, slash redirects, huge echoes and
big bodies. Raw sockets where a well-behaved client library would not misbehave enough."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tiktoken

from tests.conftest import CLIENT_KEY, INTERNAL_TOKEN
from tests.harness import GatewayProcess, ThreadedGateway

WRONG = {"authorization": "Bearer sk-wrong-guess"}
RIGHT = {"authorization": f"Bearer {CLIENT_KEY}"}


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may stop reading early: what it answered is what counts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def limits_gateway(
    registry_path: Path, request: pytest.FixtureRequest
) -> Iterator[ThreadedGateway]:
    settings = {
        "MODELS_CONFIG": str(registry_path),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "RATE_LIMIT_PER_SECOND": 0,
        "AUTH_FAILURES_PER_MINUTE": 0,
        **getattr(request, "param", {}),
    }
    with ThreadedGateway(**settings) as server:
        yield server


def with_settings(**settings: object):
    return pytest.mark.parametrize("limits_gateway", [settings], indirect=True)


# --- Defect 1: the per-IP limit comes before authentication ------------------------------------


@with_settings(RATE_LIMIT_PER_SECOND=5)
def test_wrong_keys_count_against_the_ip_limit(limits_gateway):
    with httpx.Client(base_url=limits_gateway.url) as client:
        responses = [client.get("/v1/usage", headers=WRONG) for _ in range(20)]
    statuses = [r.status_code for r in responses]
    assert statuses[:5] == [401] * 5
    assert 429 in statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in limited.headers


@with_settings(RATE_LIMIT_PER_SECOND=3)
def test_unknown_api_paths_count_against_the_ip_limit(limits_gateway):
    with httpx.Client(base_url=limits_gateway.url) as client:
        statuses = [client.post(f"/api/v1/nothing-{i}").status_code for i in range(8)]
        statuses += [client.get("/v1/also/nothing").status_code]
    assert statuses[:3] == [404] * 3
    assert 429 in statuses


@with_settings(AUTH_FAILURES_PER_MINUTE=3)
def test_failed_authentications_are_throttled_and_then_even_a_right_key_waits(limits_gateway):
    with httpx.Client(base_url=limits_gateway.url) as client:
        statuses = [client.get("/v1/usage", headers=WRONG).status_code for _ in range(3)]
        blocked = client.get("/v1/usage", headers=WRONG)
        right = client.get("/v1/usage", headers=RIGHT)
        missing = client.post("/v1/embeddings", json={"model": "x", "input": "y"})
    assert statuses == [401, 401, 401]
    for response in (blocked, right, missing):
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "too_many_failed_authentications"
        assert "3 per minute" in error["message"]
        assert 1 <= int(response.headers["retry-after"]) <= 60


def test_failed_authentications_are_counted_across_gateways_in_redis(registry_path, redis_server):
    shared = {
        "MODELS_CONFIG": str(registry_path),
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "RATE_LIMIT_PER_SECOND": 0,
        "AUTH_FAILURES_PER_MINUTE": 3,
        "REDIS_URL": redis_server.url,
        "RATE_LIMIT_KEY_PREFIX": f"egw:test:{uuid.uuid4().hex[:10]}:",
    }
    with ThreadedGateway(**shared) as first, ThreadedGateway(**shared) as second:
        a = [httpx.get(f"{first.url}/v1/usage", headers=WRONG).status_code for _ in range(2)]
        b = httpx.get(f"{second.url}/v1/usage", headers=WRONG).status_code
        b_right = httpx.get(f"{second.url}/v1/usage", headers=RIGHT).status_code
        a_fourth = httpx.get(f"{first.url}/v1/usage", headers=WRONG).status_code
        a_right = httpx.get(f"{first.url}/v1/usage", headers=RIGHT).status_code
    assert (a, b) == ([401, 401], 401)
    assert (b_right, a_fourth, a_right) == (429, 429, 429)
    with redis_server.client() as client:
        keys = client.keys(shared["RATE_LIMIT_KEY_PREFIX"] + "authfail:*")
        assert len(keys) == 1
        assert client.pttl(keys[0]) > 50_000  # a one-minute window, not the 1 s request window


@with_settings(RATE_LIMIT_PER_SECOND=2, AUTH_FAILURES_PER_MINUTE=1)
def test_the_internal_token_is_still_exempt(limits_gateway):
    internal = {"authorization": f"Bearer {INTERNAL_TOKEN}"}
    with httpx.Client(base_url=limits_gateway.url) as client:
        statuses = [client.get("/v1/usage", headers=internal).status_code for _ in range(6)]
    assert statuses == [200] * 6


# --- Defect 5: bounded headers ------------------------------------------------------------------


@pytest.mark.parametrize("size", [100_000, 8_000_000])
def test_a_huge_header_gets_431(limits_gateway, size):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    answer = exchange(limits_gateway.port, head)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"code":"request_headers_too_large"' in answer
    assert httpx.get(f"{limits_gateway.url}/healthz").status_code == 200


def test_many_headers_that_add_up_get_431(limits_gateway):
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    answer = exchange(limits_gateway.port, head)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_headers_under_the_cap_still_work_on_a_kept_alive_connection(limits_gateway):
    with httpx.Client(base_url=limits_gateway.url) as client:
        for _ in range(3):
            assert client.get("/healthz", headers={"x-pad": "p" * 30_000}).status_code == 200


# --- slow and idle clients, too many connections ------------------------------------------------


@with_settings(HEADER_TIMEOUT_SECONDS=0.5)
def test_a_head_sent_too_slowly_gets_408(limits_gateway):
    answer = exchange(limits_gateway.port, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer


@with_settings(HEADER_TIMEOUT_SECONDS=0.5)
def test_an_idle_connection_is_closed(limits_gateway):
    assert exchange(limits_gateway.port, b"") == b""


@with_settings(BODY_TIMEOUT_SECONDS=0.5)
def test_a_body_sent_too_slowly_gets_408(limits_gateway):
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
    )
    answer = exchange(limits_gateway.port, head + b'{"model": ')
    assert answer.startswith(b"HTTP/1.1 408 ")
    # The gateway is fine afterwards, and the cut request was not served.
    assert httpx.get(f"{limits_gateway.url}/healthz").status_code == 200


@with_settings(MAX_CONCURRENT_REQUESTS=2)
def test_past_the_connection_cap_a_request_gets_an_openai_503(limits_gateway):
    idle = [socket.create_connection(("127.0.0.1", limits_gateway.port)) for _ in range(2)]
    try:
        response = httpx.get(f"{limits_gateway.url}/v1/models")
    finally:
        for sock in idle:
            sock.close()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response.headers["retry-after"] == "1"


# --- concerns -----------------------------------------------------------------------------------


def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_host_header(gateway):
    response = httpx.post(
        f"{gateway.url}/api/v1/embeddings/",
        headers={**RIGHT, "host": "evil.example"},
        json={"model": "text-embedding-3-small", "input": "hi"},
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["type"] == "not_found_error"


def test_a_megabyte_model_name_is_not_echoed_back(gateway):
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers=RIGHT,
        json={"model": "m" * 1_000_000, "input": "hi"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_found"
    assert len(response.content) < 500


def test_while_a_big_input_is_tokenised_other_requests_are_served(gateway, monkeypatch):
    """Tokenising is held until /healthz has answered: if it ran on (or held) the event loop,
    /healthz could not answer at all."""
    entered, served = threading.Event(), threading.Event()
    encode_ordinary = tiktoken.Encoding.encode_ordinary

    def held_until_served(self: tiktoken.Encoding, text: str) -> list[int]:
        entered.set()
        served.wait(10)
        return encode_ordinary(self, text)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", held_until_served)
    texts = [f"item {i} " + "lorem ipsum dolor sit amet " * 75 for i in range(200)]  # ~400 kB
    statuses: list[int] = []

    def big_request() -> None:
        response = httpx.post(
            f"{gateway.url}/v1/embeddings",
            headers=RIGHT,
            json={"model": "text-embedding-3-small", "input": texts},
            timeout=60,
        )
        statuses.append(response.status_code)

    sender = threading.Thread(target=big_request)
    sender.start()
    try:
        assert entered.wait(10), "the gateway never tokenised the input"
        try:
            health = httpx.get(f"{gateway.url}/healthz", timeout=5).status_code
        except httpx.TimeoutException:
            health = None
    finally:
        served.set()
        sender.join(60)
    assert health == 200
    assert statuses == [200]


def test_the_cli_serves_with_the_same_limits_in_every_worker(registry_path):
    env = {
        "MODELS_CONFIG": str(registry_path),
        "WORKERS": "2",
        "GATEWAY_API_KEYS": "",
        "REDIS_URL": "",
        "MAX_HEADER_BYTES": "2048",
        "HEADER_TIMEOUT_SECONDS": "0.5",
    }
    with GatewayProcess(env) as gateway:
        # Several connections, so both workers answer some of them.
        for _ in range(6):
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
            assert exchange(gateway.port, head).startswith(b"HTTP/1.1 431 ")
            slow = exchange(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert slow.startswith(b"HTTP/1.1 408 ")
        assert httpx.get(f"{gateway.url}/healthz").status_code == 200
