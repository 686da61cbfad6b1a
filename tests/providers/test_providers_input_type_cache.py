"""`input_type` is part of the cache key: a query and a document of the same text are two
entries, each served from Redis the second time."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream
from tests.harness import ThreadedGateway, model_entry, write_registry

KEY = "cohere-cache-secret"


@pytest.fixture(scope="module")
def cohere() -> Iterator[FakeUpstream]:
    with FakeUpstream("cohere", api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, cohere, redis_server) -> Iterator[ThreadedGateway]:
    providers = {"cohere": {"type": "cohere", "base_url": cohere.base_url, "api_key": KEY}}
    models = {"embed": model_entry([{"provider": "cohere", "model": "embed-v4.0"}])}
    path = write_registry(tmp_path_factory.mktemp("cache") / "models.yaml", providers, models)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        REDIS_URL=redis_server.url,
        CACHE_KEY_PREFIX="egw:emb:input-type-test:",
        RATE_LIMIT_PER_SECOND=0,
    ) as server:
        yield server


def test_each_input_type_is_cached_apart(gateway, cohere):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    kinds = [None, "query", "document"]

    def embed(kind):
        extra = {"input_type": kind} if kind else None
        return client.embeddings.create(model="embed", input="same text", extra_body=extra)

    for kind in kinds:
        embed(kind)
    sent = [request.json["input_type"] for request in cohere.embedding_requests()]
    # No input_type and "document" both reach Cohere as search_document, but are keyed apart:
    # the route's default (here none) decides what "no input_type" means.
    assert sent == ["search_document", "search_query", "search_document"]
    for kind in kinds:
        embed(kind)
    assert len(cohere.embedding_requests()) == 3  # the second round came from the cache
