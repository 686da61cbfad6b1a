"""The new wire-protocol fakes refuse what their providers document as errors, so the gateway
tests against them would notice a request the real provider would refuse."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import FakeUpstream

KEY = "fake-key"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeUpstream]]:
    fakes = {
        name: FakeUpstream(name, api_key=KEY) for name in ("cohere", "voyage", "gemini", "azure")
    }
    for fake in fakes.values():
        fake.start()
    yield fakes
    for fake in fakes.values():
        fake.stop()


def test_cohere_requires_input_type_and_answers_its_error_shape(servers):
    url = servers["cohere"].url + "/v2/embed"
    auth = {"authorization": f"Bearer {KEY}"}
    bad = httpx.post(url, headers=auth, json={"model": "embed-v4.0", "texts": ["a"]})
    assert bad.status_code == 400 and "input_type" in bad.json()["message"]
    good = httpx.post(
        url,
        headers=auth,
        json={"model": "embed-v4.0", "texts": ["a"], "input_type": "search_query"},
    )
    body = good.json()
    assert len(body["embeddings"]["float"]) == 1
    assert body["meta"]["billed_units"]["input_tokens"] == 1


def test_voyage_refuses_an_unknown_input_type_with_detail(servers):
    response = httpx.post(
        servers["voyage"].url + "/v1/embeddings",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": "voyage-3.5", "input": ["a"], "input_type": "search_query"},
    )
    assert response.status_code == 400 and "input_type" in response.json()["detail"]


def test_gemini_wants_its_key_header_and_the_urls_model_in_each_request(servers):
    url = servers["gemini"].url + "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    request = {"model": "models/other", "content": {"parts": [{"text": "a"}]}}
    bearer = httpx.post(
        url, headers={"authorization": f"Bearer {KEY}"}, json={"requests": [request]}
    )
    assert bearer.status_code == 400
    assert bearer.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    mismatched = httpx.post(url, headers={"x-goog-api-key": KEY}, json={"requests": [request]})
    assert mismatched.status_code == 400 and "models/gemini-embedding-001" in mismatched.text


def test_azure_needs_api_version_and_its_api_key_header(servers):
    url = servers["azure"].url + "/openai/deployments/dep/embeddings"
    assert httpx.post(url, headers={"api-key": KEY}, json={"input": "a"}).status_code == 404
    bearer = httpx.post(
        url,
        params={"api-version": "2024-10-21"},
        headers={"authorization": f"Bearer {KEY}"},
        json={"input": "a"},
    )
    assert bearer.status_code == 401
    good = httpx.post(
        url, params={"api-version": "2024-10-21"}, headers={"api-key": KEY}, json={"input": "a"}
    )
    assert good.status_code == 200 and len(good.json()["data"]) == 1
