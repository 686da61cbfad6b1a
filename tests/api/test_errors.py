"""Every error is OpenAI-shaped, with the right status, and never leaks a key."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import AIML_KEY, CLIENT_KEY, NANOGPT_KEY, NUGEN_KEY, providers_for
from tests.fakes import Fault
from tests.harness import ThreadedGateway, free_port, model_entry, write_registry

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
SECRETS = (CLIENT_KEY, NANOGPT_KEY, AIML_KEY, NUGEN_KEY)


def post(gateway, body, headers=AUTH, **kwargs) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/embeddings", headers=headers, json=body, **kwargs)


def assert_error(response: httpx.Response, status: int, *, param=None, code=None, type=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    if type is not None:
        assert body["error"]["type"] == type
    assert "detail" not in body
    for secret in SECRETS:
        assert secret not in response.text
    assert response.headers["x-request-id"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "text-embedding-3-small", "input": ""}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": [[]]}, "input"),
        ({"model": "text-embedding-3-small", "input": ["ok", ""]}, "input"),
        ({"model": "text-embedding-3-small", "input": ["ok", 3]}, "input"),
        ({"model": "text-embedding-3-small", "input": [1, "a"]}, "input"),
        ({"model": "text-embedding-3-small", "input": [-1]}, "input"),
        ({"model": "text-embedding-3-small", "input": [[1, 2], [10**9]]}, "input"),
        ({"model": "text-embedding-3-small", "input": [True]}, "input"),
        ({"model": "text-embedding-3-small", "input": {"a": 1}}, "input"),
        ({"model": "text-embedding-3-small"}, "input"),
        ({"model": "text-embedding-3-small", "input": ["x"] * 2049}, "input"),
        ({"input": "x"}, "model"),
        ({"model": 7, "input": "x"}, "model"),
        (
            {"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"},
            "encoding_format",
        ),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 17}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 8.5}, "dimensions"),
        ({"model": "aiml-only", "input": "x", "dimensions": 8}, "dimensions"),
        ({"model": "text-embedding-3-small", "input": "x", "user": 5}, "user"),
        ({"model": "tiny-context", "input": "one two three four five six seven"}, "input"),
    ],
)
def test_invalid_requests_are_400_with_param(gateway, nanogpt, body, param):
    assert_error(post(gateway, body), 400, param=param, type="invalid_request_error")
    assert nanogpt.embedding_requests() == []


def test_unknown_model_is_model_not_found(gateway):
    error = assert_error(
        post(gateway, {"model": "no-such-model", "input": "x"}), 400, code="model_not_found"
    )
    assert error["param"] == "model"


def test_unknown_fields_are_ignored(gateway):
    response = post(gateway, {"model": "aiml-only", "input": "x", "future_field": {"a": 1}})
    assert response.status_code == 200


def test_too_many_tokens_in_total(gateway, nanogpt):
    ids = [[100] * 200] * 1501  # 300,200 tokens, each item within max_tokens
    body = {"model": "text-embedding-3-small", "input": ids}
    error = assert_error(post(gateway, body, timeout=30), 400, param="input")
    assert "300000" in error["message"]


def test_context_length_counts_tokens_not_characters(gateway):
    # tiny-context allows 5 tokens: "hello" is 1, "hello " * 6 is 7.
    assert post(gateway, {"model": "tiny-context", "input": "hello"}).status_code == 200
    error = assert_error(
        post(gateway, {"model": "tiny-context", "input": "hello " * 6}), 400, param="input"
    )
    assert error["code"] == "context_length_exceeded"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b'"just a string"', b"\xff\xfe"])
def test_malformed_bodies_are_400_never_422(gateway, content):
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={**AUTH, "content-type": "application/json"},
        content=content,
    )
    assert_error(response, 400, type="invalid_request_error")


def test_body_over_the_limit_is_413(gateway):
    huge = b'{"model": "x", "input": "' + b"a" * 4_100_000 + b'"}'
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={**AUTH, "content-type": "application/json"},
        content=huge,
    )
    assert_error(response, 413)

    def chunks() -> Iterator[bytes]:  # no content-length: the cap applies while reading
        yield b'{"model": "x", "input": "'
        for _ in range(50):
            yield b"a" * 100_000
        yield b'"}'

    response = httpx.post(f"{gateway.url}/v1/embeddings", headers=AUTH, content=chunks())
    assert_error(response, 413)


def test_missing_and_wrong_keys_are_401(gateway):
    assert_error(
        post(gateway, {"model": "aiml-only", "input": "x"}, headers={}),
        401,
        type="authentication_error",
    )
    assert_error(
        post(
            gateway, {"model": "aiml-only", "input": "x"}, headers={"authorization": "Bearer wrong"}
        ),
        401,
        type="authentication_error",
    )
    assert_error(
        post(gateway, {"model": "aiml-only", "input": "x"}, headers={"x-api-key": NANOGPT_KEY}), 401
    )
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="aiml-only", input="x")


def test_internal_token_is_accepted(gateway):
    from tests.conftest import INTERNAL_TOKEN

    response = post(
        gateway, {"model": "aiml-only", "input": "x"}, headers={"x-api-key": INTERNAL_TOKEN}
    )
    assert response.status_code == 200


def test_unknown_path_and_method_in_error_shape(gateway):
    assert_error(httpx.get(f"{gateway.url}/v1/nothing-here"), 404, type="not_found_error")
    assert_error(httpx.get(f"{gateway.url}/elsewhere"), 404)
    assert_error(httpx.get(f"{gateway.url}/v1/embeddings"), 405)


def test_upstream_400_comes_back_as_400_with_its_message(gateway, nanogpt, aiml):
    nanogpt.add_fault(Fault.http_status(400))
    error = assert_error(post(gateway, {"model": "text-embedding-3-small", "input": "x"}), 400)
    assert "NanoGPT rejected the input" in error["message"]
    assert "upstream fault 400" in error["message"]
    assert aiml.embedding_requests() == []  # not failed over


def test_sdk_sees_statuses_as_its_own_exceptions(gateway, nanogpt, aiml):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="nope", input="x")
    assert bad.value.code == "model_not_found"
    nanogpt.add_fault(Fault.http_status(503), times=None)
    aiml.add_fault(Fault.http_status(500), times=None)
    with pytest.raises(openai.InternalServerError) as failed:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert failed.value.status_code == 502
    assert "NanoGPT answered HTTP 503" in failed.value.message
    assert "AI/ML API answered HTTP 500" in failed.value.message


@pytest.fixture(scope="module")
def misconfigured(tmp_path_factory, nanogpt, aiml, nugen) -> Iterator[ThreadedGateway]:
    """Wrong AI/ML key, NanoGPT pointing at a closed port, Nugen hanging past its timeout."""
    providers = providers_for(nanogpt, aiml, nugen, max_attempts=1)
    providers["aiml"]["api_key"] = "${WRONG_AIML_KEY:-definitely-wrong-key}"
    providers["nanogpt"]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    providers["nugen"]["timeout_seconds"] = 0.3
    models = {
        "nano-down": model_entry([{"provider": "nanogpt", "model": "m"}]),
        "aiml-bad-key": model_entry([{"provider": "aiml", "model": "m"}]),
        "nugen-slow": model_entry([{"provider": "nugen", "model": "m"}]),
    }
    path = write_registry(tmp_path_factory.mktemp("bad") / "models.yaml", providers, models)
    with ThreadedGateway(MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY) as server:
        yield server


def test_connect_error_is_502(misconfigured):
    response = post(misconfigured, {"model": "nano-down", "input": "x"})
    assert "x-should-retry" not in response.headers  # a retry may well succeed
    error = assert_error(response, 502)
    assert "NanoGPT" in error["message"] and "connection failed" in error["message"]


def test_upstream_auth_failure_is_502_naming_the_env_var(misconfigured):
    response = post(misconfigured, {"model": "aiml-bad-key", "input": "x"})
    assert response.headers["x-should-retry"] == "false"  # no retry fixes the gateway's key
    error = assert_error(response, 502)
    assert "AI/ML API rejected the gateway's API key" in error["message"]
    assert "WRONG_AIML_KEY" in error["message"]
    assert "definitely-wrong-key" not in error["message"]


def test_upstream_timeout_is_504(misconfigured, nugen):
    nugen.add_fault(Fault.hang(2.0))
    error = assert_error(post(misconfigured, {"model": "nugen-slow", "input": "x"}), 504)
    assert "Nugen" in error["message"]
