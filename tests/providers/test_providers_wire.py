"""The provider types openai, azure_openai, cohere, voyage and gemini, each against a fake that
speaks its documented wire protocol on a real socket, through the gateway, with the OpenAI SDK.

Per type: the right vectors in both encodings; `dimensions` and `input_type` reach the wire in
the provider's own fields; usage is read from the provider's own field (or counted by the
gateway where it gives none); its auth header is sent and no key leaks into responses or logs;
a 400 is passed on with the provider's message; a malformed answer fails over.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from app.core.tokens import count_tokens
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, RecordedRequest, fake_token_count, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry

DIMS = 16
BACKUP_KEY = "backup-upstream-secret-999"
TEXTS = ["unbelievable antidisestablishmentarianism", "hello world"]


@dataclass(frozen=True)
class Case:
    """One provider type: how to configure it and how its wire carries our fields."""

    type: str
    protocol: str
    key: str
    upstream_model: str
    extra: dict[str, Any]  # more provider config
    auth: Callable[[RecordedRequest, str], bool]
    dimensions_on_wire: Callable[[Any], Any]
    input_type_on_wire: Callable[[Any], Any]
    # What the wire carries for no input_type, "query" and "document".
    input_types: tuple[Any, Any, Any]
    display_name: str
    fields: frozenset[str]  # what a plain request puts on the wire, and nothing more
    counts_usage: bool = True  # False: the provider reports none, the gateway counts


def bearer(request: RecordedRequest, key: str) -> bool:
    return request.headers.get("authorization") == f"Bearer {key}"


def header(name: str) -> Callable[[RecordedRequest, str], bool]:
    def check(request: RecordedRequest, key: str) -> bool:
        return request.headers.get(name) == key and "authorization" not in request.headers

    return check


def field(name: str) -> Callable[[Any], Any]:
    return lambda body: body.get(name)


def gemini_field(name: str) -> Callable[[Any], Any]:
    def read(body: Any) -> Any:
        values = {request.get(name) for request in body["requests"]}
        assert len(values) == 1  # every request of the batch carries the same
        return values.pop()

    return read


CASES = [
    Case(
        type="openai",
        protocol="openai",
        key="openai-upstream-secret-aaa",
        upstream_model="text-embedding-3-small",
        extra={
            "organization": "org-test",
            "project": "proj-test",
            "headers": {"x-extra": "static-value"},
            "supports_user": True,
            "returns_base64": True,
        },
        auth=bearer,
        dimensions_on_wire=field("dimensions"),
        input_type_on_wire=field("input_type"),
        input_types=(None, None, None),  # OpenAI has no such notion: never sent
        display_name="OpenAI-compatible upstream",
        fields=frozenset({"model", "input", "encoding_format"}),
    ),
    Case(
        type="azure_openai",
        protocol="azure",
        key="azure-upstream-secret-bbb",
        upstream_model="my-embedding-deployment",
        extra={"api_version": "2024-10-21"},
        auth=header("api-key"),
        dimensions_on_wire=field("dimensions"),
        input_type_on_wire=field("input_type"),
        input_types=(None, None, None),
        display_name="Azure OpenAI",
        fields=frozenset({"model", "input"}),
    ),
    Case(
        type="cohere",
        protocol="cohere",
        key="cohere-upstream-secret-ccc",
        upstream_model="embed-v4.0",
        extra={},
        auth=bearer,
        dimensions_on_wire=field("output_dimension"),
        input_type_on_wire=field("input_type"),
        input_types=("search_document", "search_query", "search_document"),
        display_name="Cohere",
        fields=frozenset({"model", "texts", "input_type", "embedding_types"}),
    ),
    Case(
        type="voyage",
        protocol="voyage",
        key="voyage-upstream-secret-ddd",
        upstream_model="voyage-3.5",
        extra={"truncation": False},
        auth=bearer,
        dimensions_on_wire=field("output_dimension"),
        input_type_on_wire=field("input_type"),
        input_types=(None, "query", "document"),
        display_name="Voyage AI",
        fields=frozenset({"model", "input", "truncation", "encoding_format"}),
    ),
    Case(
        type="gemini",
        protocol="gemini",
        key="gemini-upstream-secret-eee",
        upstream_model="gemini-embedding-001",
        extra={},
        auth=header("x-goog-api-key"),
        dimensions_on_wire=gemini_field("outputDimensionality"),
        input_type_on_wire=gemini_field("taskType"),
        input_types=(None, "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT"),
        display_name="Gemini",
        fields=frozenset({"requests"}),
        counts_usage=False,
    ),
]
IDS = [case.type for case in CASES]
# The types with a notion of input_type; a route default on the others is refused at start-up.
RETRIEVAL = [case for case in CASES if case.input_types != (None, None, None)]
ALL_KEYS = [case.key for case in CASES] + [BACKUP_KEY] + [f"wrong-{c.key}" for c in CASES]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeUpstream]]:
    servers = {case.type: FakeUpstream(case.protocol, api_key=case.key) for case in CASES}
    servers["backup"] = FakeUpstream("openai", api_key=BACKUP_KEY)
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "fakes" in request.fixturenames:
        for server in request.getfixturevalue("fakes").values():
            server.clear()
            server.max_inputs = None


def provider_entry(case: Case, fake: FakeUpstream, key: str) -> dict[str, Any]:
    return {"type": case.type, "base_url": fake.base_url, "api_key": key, **case.extra}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, fakes) -> Iterator[ThreadedGateway]:
    providers: dict[str, Any] = {
        "backup": {"type": "openai", "base_url": fakes["backup"].base_url, "api_key": BACKUP_KEY}
    }
    models: dict[str, Any] = {}
    for case in CASES:
        fake = fakes[case.type]
        providers[case.type] = provider_entry(case, fake, case.key)
        providers[f"{case.type}-bad"] = provider_entry(case, fake, f"wrong-{case.key}")
        route = {"provider": case.type, "model": case.upstream_model}
        models[case.type] = model_entry([route], dimensions=DIMS, supports_dimensions=True)
        if case in RETRIEVAL:
            models[f"{case.type}-query"] = model_entry(
                [{**route, "input_type": "query"}], dimensions=DIMS
            )
        models[f"{case.type}-failover"] = model_entry(
            [route, {"provider": "backup", "model": "backup-model"}], dimensions=DIMS
        )
        models[f"{case.type}-bad"] = model_entry(
            [{"provider": f"{case.type}-bad", "model": case.upstream_model}], dimensions=DIMS
        )
    path = write_registry(tmp_path_factory.mktemp("wire") / "models.yaml", providers, models)
    with ThreadedGateway(
        MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY, RATE_LIMIT_PER_SECOND=0
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)


def expected(case: Case, text: str, dimensions: int | None = None) -> np.ndarray:
    # Azure's fake, like Azure, knows the model by its deployment name.
    return fake_vector(case.upstream_model, text, DIMS, dimensions)


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message and every extra field, as the JSON log lines would carry them."""
    return "\n".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)


def last_body(fake: FakeUpstream) -> Any:
    return fake.embedding_requests()[-1].json


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_openai_sdk_gets_the_providers_vectors_in_both_encodings(case, client, fakes):
    floats = client.embeddings.create(model=case.type, input=TEXTS, encoding_format="float")
    # The SDK's default asks the gateway for base64 and decodes it.
    decoded = client.embeddings.create(model=case.type, input=TEXTS)
    for response in (floats, decoded):
        assert [item.index for item in response.data] == [0, 1]
        for item, text in zip(response.data, TEXTS, strict=True):
            np.testing.assert_array_equal(
                np.asarray(item.embedding, dtype=np.float32), expected(case, text)
            )
    assert len(fakes[case.type].embedding_requests()) == 2


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_raw_base64_is_the_float32_bytes_of_the_providers_vector(case, gateway, fakes):
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": case.type, "input": TEXTS[0], "encoding_format": "base64"},
    )
    assert response.status_code == 200, response.text
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), expected(case, TEXTS[0]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_plain_request_sends_only_the_fields_the_provider_documents(case, client, fakes):
    client.embeddings.create(model=case.type, input=TEXTS)
    body = last_body(fakes[case.type])
    assert set(body) == case.fields
    if case.type == "cohere":
        assert body["texts"] == TEXTS and body["embedding_types"] == ["float"]
    if case.type == "voyage":
        assert body["truncation"] is False and body["encoding_format"] == "base64"
    if case.type == "gemini":
        assert body["requests"] == [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": text}]}}
            for text in TEXTS
        ]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dimensions_reach_the_wire_in_the_providers_own_field(case, client, fakes):
    response = client.embeddings.create(model=case.type, input=TEXTS[0], dimensions=8)
    body = last_body(fakes[case.type])
    assert case.dimensions_on_wire(body) == 8
    assert "dimensions" not in body or case.type in ("openai", "azure_openai")
    np.testing.assert_array_equal(
        np.asarray(response.data[0].embedding, dtype=np.float32), expected(case, TEXTS[0], 8)
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_input_type_maps_to_the_providers_vocabulary(case, client, fakes):
    fake = fakes[case.type]
    client.embeddings.create(model=case.type, input="q")
    sent = [case.input_type_on_wire(last_body(fake))]
    for input_type in ("query", "document"):
        client.embeddings.create(model=case.type, input="q", extra_body={"input_type": input_type})
        sent.append(case.input_type_on_wire(last_body(fake)))
    assert tuple(sent) == case.input_types


@pytest.mark.parametrize("case", RETRIEVAL, ids=[case.type for case in RETRIEVAL])
def test_a_routes_input_type_default_applies_unless_the_client_names_one(case, client, fakes):
    fake = fakes[case.type]
    client.embeddings.create(model=f"{case.type}-query", input="q")
    assert case.input_type_on_wire(last_body(fake)) == case.input_types[1]
    client.embeddings.create(
        model=f"{case.type}-query", input="q", extra_body={"input_type": "document"}
    )
    assert case.input_type_on_wire(last_body(fake)) == case.input_types[2]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_usage_is_read_from_the_providers_own_field(case, client):
    response = client.embeddings.create(model=case.type, input=TEXTS)
    theirs = sum(fake_token_count(text) for text in TEXTS)
    ours = sum(count_tokens(TEXTS))
    assert theirs != ours  # so the assertion below tells them apart
    assert response.usage.prompt_tokens == (theirs if case.counts_usage else ours)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_providers_auth_header_is_sent(case, client, fakes):
    client.embeddings.create(model=case.type, input="x")
    request = fakes[case.type].embedding_requests()[-1]
    assert case.auth(request, case.key)
    if case.type == "azure_openai":
        assert request.path == "/openai/deployments/my-embedding-deployment/embeddings"
        assert request.query == {"api-version": "2024-10-21"}
    if case.type == "gemini":
        assert request.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"


def test_openai_sends_organization_project_static_headers_and_user(client, fakes):
    client.embeddings.create(model="openai", input="x", user="user-7")
    request = fakes["openai"].embedding_requests()[-1]
    assert request.headers["openai-organization"] == "org-test"
    assert request.headers["openai-project"] == "proj-test"
    assert request.headers["x-extra"] == "static-value"
    assert request.json["user"] == "user-7"
    assert request.json["encoding_format"] == "base64"  # returns_base64: true


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_wrong_key_is_an_auth_failure_that_names_the_env_not_the_key(case, client, caplog, fakes):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=f"{case.type}-bad", input="x")
    assert caught.value.status_code == 502
    assert f"{case.display_name} rejected the gateway's API key" in caught.value.message
    assert fakes[case.type].embedding_requests()[-1].headers  # it did reach the provider
    logged = everything_logged(caplog)
    assert "upstream call failed" in logged and f"{case.type}-bad" in logged
    for key in ALL_KEYS:
        assert key not in caught.value.response.text + logged


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_providers_400_is_passed_on_with_its_message(case, client, caplog, fakes):
    caplog.set_level(logging.DEBUG)
    fakes[case.type].max_inputs = 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=case.type, input=TEXTS)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["message"] == (f"{case.display_name} rejected the input: too many inputs: 2 > 1")
    assert error["code"] == "upstream_rejected_input"
    logged = everything_logged(caplog)
    assert any(r.name == "app.access" and getattr(r, "status", 0) == 400 for r in caplog.records)
    for key in ALL_KEYS:
        assert key not in caught.value.response.text + logged


@pytest.mark.parametrize("fault", ["wrong_dims", "non_json", "nan"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_malformed_answer_fails_over(case, fault, client, fakes):
    fakes[case.type].add_fault(fault, times=None)
    response = client.embeddings.create(model=f"{case.type}-failover", input=TEXTS)
    for item, text in zip(response.data, TEXTS, strict=True):
        np.testing.assert_array_equal(
            np.asarray(item.embedding, dtype=np.float32), fake_vector("backup-model", text, DIMS)
        )
    assert fakes[case.type].embedding_requests()  # tried first
    assert len(fakes["backup"].embedding_requests()) == 1


@pytest.mark.parametrize("value", ["search_query", "QUERY", 3, ""])
def test_an_unknown_input_type_is_a_400(client, fakes, value):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="cohere", input="x", extra_body={"input_type": value})
    assert caught.value.body["param"] == "input_type"
    assert caught.value.body["message"] == "'input_type' must be 'query' or 'document'."
    assert fakes["cohere"].embedding_requests() == []
