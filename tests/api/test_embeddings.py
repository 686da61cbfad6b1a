"""The embeddings contract through the real OpenAI SDK, a real gateway and fake upstreams."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from app.core.tokens import decode_tokens
from tests.conftest import AIML_KEY, CLIENT_KEY, NANOGPT_KEY, NUGEN_KEY
from tests.fakes import fake_vector


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/api/v1", api_key=CLIENT_KEY, max_retries=0)


def as_array(embedding) -> np.ndarray:
    return np.asarray(embedding, dtype=np.float64)


def exact(model: str, text, dims: int, requested: int | None = None) -> np.ndarray:
    return fake_vector(model, text, dims, requested).astype(np.float64)


def test_sdk_default_base64_gives_the_upstreams_float32_values_exactly(client, nanogpt):
    response = client.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert response.object == "list"
    assert response.model == "text-embedding-3-small"
    assert [d.index for d in response.data] == [0]
    np.testing.assert_array_equal(
        as_array(response.data[0].embedding), exact("text-embedding-3-small", "hello world", 16)
    )
    sent = nanogpt.embedding_requests()[-1]
    assert sent.headers["authorization"] == f"Bearer {NANOGPT_KEY}"
    assert sent.json["model"] == "text-embedding-3-small"
    assert sent.json["input"] == ["hello world"]
    assert "encoding_format" not in sent.json  # floats asked, base64 encoded locally


def test_float_format_and_list_input_keep_input_order(client):
    texts = [f"sentence number {i}" for i in range(7)]
    response = client.embeddings.create(
        model="text-embedding-3-small", input=texts, encoding_format="float"
    )
    assert [d.index for d in response.data] == list(range(7))
    for text, item in zip(texts, response.data, strict=True):
        np.testing.assert_array_equal(
            as_array(item.embedding), exact("text-embedding-3-small", text, 16)
        )
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_raw_base64_is_little_endian_float32(gateway):
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "text-embedding-3-small", "input": "abc", "encoding_format": "base64"},
    )
    assert response.status_code == 200
    raw = base64.b64decode(response.json()["data"][0]["embedding"], validate=True)
    np.testing.assert_array_equal(
        np.frombuffer(raw, dtype="<f4"), fake_vector("text-embedding-3-small", "abc", 16)
    )


def test_v1_alias_and_x_api_key_header(gateway):
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"x-api-key": CLIENT_KEY},
        json={"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float"},
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


def test_dimensions_are_forwarded_and_honoured(client, nanogpt):
    response = client.embeddings.create(
        model="text-embedding-3-small", input="shorter please", dimensions=8
    )
    assert len(response.data[0].embedding) == 8
    np.testing.assert_array_equal(
        as_array(response.data[0].embedding),
        exact("text-embedding-3-small", "shorter please", 16, 8),
    )
    assert nanogpt.embedding_requests()[-1].json["dimensions"] == 8


def test_token_ids_are_decoded_for_a_string_only_route(client, aiml):
    ids = [[15339, 1917], [9906, 11, 1917, 0]]
    texts = decode_tokens(ids)
    response = client.embeddings.create(model="aiml-only", input=ids, encoding_format="float")
    sent = aiml.embedding_requests()[-1]
    assert sent.json["input"] == texts == ["hello world", "Hello, world!"]
    assert sent.json["model"] == "upstream-aiml-name"
    for text, item in zip(texts, response.data, strict=True):
        np.testing.assert_array_equal(
            as_array(item.embedding), exact("upstream-aiml-name", text, 16)
        )


def test_flat_token_array_is_one_input(client, aiml):
    response = client.embeddings.create(model="aiml-only", input=[15339, 1917])
    assert len(response.data) == 1
    assert aiml.embedding_requests()[-1].json["input"] == ["hello world"]


def test_token_ids_go_through_to_a_route_that_accepts_them(client, nanogpt):
    response = client.embeddings.create(model="nano-tokens", input=[[1, 2, 3]])
    assert nanogpt.embedding_requests()[-1].json["input"] == [[1, 2, 3]]
    np.testing.assert_array_equal(
        as_array(response.data[0].embedding), exact("nano-tokens", [1, 2, 3], 16)
    )


def test_user_is_forwarded_only_where_documented(client, nanogpt, aiml, nugen):
    client.embeddings.create(model="text-embedding-3-small", input="x", user="u-1")
    client.embeddings.create(model="aiml-only", input="x", user="u-1")
    client.embeddings.create(model="nugen-flash-embed", input="x", user="u-1")
    assert nanogpt.embedding_requests()[-1].json["user"] == "u-1"
    assert "user" not in aiml.embedding_requests()[-1].json
    assert set(nugen.embedding_requests()[-1].json) == {"model", "input"}


def test_nugen_is_normalised_to_openais_shape(gateway, client, nugen):
    raw = httpx.post(
        f"{gateway.url}/api/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "nugen-flash-embed", "input": ["one two", "three"], "dimensions": 12},
    ).json()
    assert set(raw) == {"object", "data", "model", "usage"}
    assert raw["object"] == "list"
    assert raw["model"] == "nugen-flash-embed"
    assert [set(item) for item in raw["data"]] == [{"object", "index", "embedding"}] * 2
    assert raw["usage"] == {"prompt_tokens": 3, "total_tokens": 3}  # the fake's count
    sent = nugen.embedding_requests()[-1]
    assert sent.headers["authorization"] == f"Bearer {NUGEN_KEY}"
    assert sent.json == {
        "model": "nugen-flash-embed",
        "input": ["one two", "three"],
        "dimensions": 12,
    }
    response = client.embeddings.create(model="nugen-flash-embed", input="one two")
    np.testing.assert_array_equal(
        as_array(response.data[0].embedding), exact("nugen-flash-embed", "one two", 32)
    )


def test_nugen_gets_decoded_text_for_token_ids(client, nugen):
    client.embeddings.create(model="nugen-flash-embed", input=[[15339, 1917]])
    assert nugen.embedding_requests()[-1].json["input"] == ["hello world"]


def test_models_list_for_the_sdk(client):
    ids = [model.id for model in client.models.list()]
    assert "text-embedding-3-small" in ids and "nugen-flash-embed" in ids


def test_embedding_models_has_nanogpts_shape(gateway):
    body = httpx.get(f"{gateway.url}/api/v1/embedding-models").json()
    assert body["object"] == "list"
    entry = next(m for m in body["data"] if m["id"] == "text-embedding-3-small")
    assert set(entry) == {
        "id",
        "object",
        "created",
        "owned_by",
        "name",
        "description",
        "dimensions",
        "supports_dimensions",
        "max_tokens",
        "pricing",
    }
    assert entry["object"] == "model"
    assert entry["dimensions"] == 16 and entry["supports_dimensions"] is True
    assert entry["pricing"] == {"per_million_tokens": 0.02, "currency": "USD"}
    assert isinstance(entry["created"], int)


def test_embedding_models_rejects_a_bad_key_but_not_a_missing_one(gateway):
    assert httpx.get(f"{gateway.url}/v1/embedding-models").status_code == 200
    bad = httpx.get(f"{gateway.url}/v1/embedding-models", headers={"x-api-key": "nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["type"] == "authentication_error"


def test_request_id_is_echoed_or_made(gateway, nanogpt):
    echoed = httpx.get(f"{gateway.url}/v1/models", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = httpx.get(f"{gateway.url}/v1/models")
    assert len(made.headers["x-request-id"]) >= 16
    httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "trace-42"},
        json={"model": "text-embedding-3-small", "input": "x"},
    )
    assert nanogpt.embedding_requests()[-1].headers["x-request-id"] == "trace-42"


def test_no_upstream_key_in_any_response(gateway, nanogpt):
    nanogpt.add_fault("status", times=4)
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "text-embedding-3-small", "input": "x"},
    )
    for secret in (NANOGPT_KEY, AIML_KEY, NUGEN_KEY):
        assert secret not in response.text


@pytest.fixture(scope="module")
def keyless_aiml(tmp_path_factory, nanogpt, aiml, nugen):
    from tests.conftest import providers_for, standard_models
    from tests.harness import ThreadedGateway, write_registry

    providers = providers_for(nanogpt, aiml, nugen)
    providers["aiml"]["api_key"] = "${UNSET_AIML_KEY_FOR_TEST:-}"
    path = write_registry(
        tmp_path_factory.mktemp("keyless") / "models.yaml", providers, standard_models()
    )
    with ThreadedGateway(MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY) as server:
        yield server


def test_a_model_without_any_keyed_route_is_hidden_and_answers_503(keyless_aiml, aiml):
    client = openai.OpenAI(base_url=f"{keyless_aiml.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    assert "aiml-only" not in {m.id for m in client.models.list()}
    detailed = httpx.get(f"{keyless_aiml.url}/v1/embedding-models").json()["data"]
    assert "aiml-only" not in {m["id"] for m in detailed}
    assert "text-embedding-3-small" in {m["id"] for m in detailed}
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="aiml-only", input="x")
    assert caught.value.status_code == 503
    assert "UNSET_AIML_KEY_FOR_TEST" in caught.value.message
    assert aiml.embedding_requests() == []


def test_a_route_without_its_key_is_skipped(keyless_aiml, nanogpt, aiml):
    from tests.fakes import Fault

    nanogpt.add_fault(Fault.http_status(500), times=None)
    client = openai.OpenAI(base_url=f"{keyless_aiml.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.status_code == 502
    assert aiml.embedding_requests() == []  # never called without a key
