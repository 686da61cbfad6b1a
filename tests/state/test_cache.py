"""The embedding cache, de-duplication, coalescing and usage accounting, on real Redis."""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from app.core.tokens import count_tokens
from tests.cache_support import check_mixed_orders
from tests.conftest import (
    CLIENT_KEY,
    INTERNAL_TOKEN,
    OTHER_CLIENT_KEY,
    providers_for,
    standard_models,
)
from tests.fakes import fake_token_count, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.keys_support import wait_until
from tests.redis_server import RedisServer

MODEL = "text-embedding-3-small"  # routes to the nanogpt fake as "text-embedding-3-small"
CORPUS = [f"document number {i} about {word}" for i, word in enumerate("abcdefghij")]


@pytest.fixture(scope="module")
def cached(tmp_path_factory, nanogpt, aiml, nugen, redis_server) -> Iterator[ThreadedGateway]:
    models = standard_models()
    models["uncached"] = model_entry([{"provider": "nanogpt", "model": "uncached"}], dimensions=16)
    models["uncached"]["cache"] = False
    path = tmp_path_factory.mktemp("cache") / "models.yaml"
    write_registry(path, providers_for(nanogpt, aiml, nugen), models)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=f"{CLIENT_KEY},{OTHER_CLIENT_KEY}",
        GATEWAY_INTERNAL_TOKEN=INTERNAL_TOKEN,
        REDIS_URL=redis_server.url,
        RATE_LIMIT_PER_SECOND=0,
        CACHE_KEY_PREFIX=f"test:{uuid.uuid4().hex[:8]}:",
        USAGE_KEY_PREFIX=f"usage:{uuid.uuid4().hex[:8]}:",
    ) as server:
        yield server


def embed(gateway, texts, *, key=CLIENT_KEY, model=MODEL, headers=None, **extra):
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {key}", **(headers or {})},
        json={"model": model, "input": texts, "encoding_format": "float", **extra},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def vectors(response: httpx.Response) -> np.ndarray:
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def expected(texts, model=MODEL, dims=None) -> np.ndarray:
    return np.array([fake_vector(model, t, 16, dims) for t in texts])


def sent_upstream(fake) -> list:
    return [item for r in fake.embedding_requests() for item in r.json["input"]]


def test_mixed_hit_and_miss_batches_in_any_order_match_an_uncached_run(cached, nanogpt):
    corpus = [f"mixed {text}" for text in CORPUS]
    check_mixed_orders(cached.url, nanogpt, corpus, MODEL, rounds=5, take=6)
    nanogpt.clear()
    response = embed(cached, list(reversed(corpus)) + corpus[:2])
    assert response.headers["x-cache"] == "hit"
    np.testing.assert_array_equal(vectors(response), expected(list(reversed(corpus)) + corpus[:2]))
    assert nanogpt.embedding_requests() == []


def test_a_hit_with_dimensions_is_never_confused_with_full_width(cached):
    text = "the same words at two widths"
    full = vectors(embed(cached, [text]))
    short = vectors(embed(cached, [text], dimensions=8))
    assert short.shape == (1, 8) and full.shape == (1, 16)
    np.testing.assert_array_equal(short, expected([text], dims=8))
    again = embed(cached, [text], dimensions=8)
    assert again.headers["x-cache"] == "hit"
    np.testing.assert_array_equal(vectors(again), short)


def test_duplicates_in_a_batch_reach_the_upstream_once(cached, nanogpt):
    batch = ["dup a", "dup b", "dup a", "dup a", "dup c", "dup b"]
    response = embed(cached, batch, model="uncached")
    assert sent_upstream(nanogpt) == ["dup a", "dup b", "dup c"]
    np.testing.assert_array_equal(vectors(response), expected(batch, model="uncached"))
    assert "x-cache" not in response.headers  # this model opted out of the cache
    assert response.json()["usage"]["prompt_tokens"] == 12  # what the client sent: 6 x 2


def test_duplicates_count_every_occurrence_at_the_upstreams_count(cached, nanogpt):
    text = "semi-colon-separated;hyphenated-words"  # one word to the fake, many cl100k tokens
    assert fake_token_count(text) < count_tokens([text])[0]
    for model in ("uncached", MODEL):
        response = embed(cached, [text] * 3, model=model)
        assert response.json()["usage"]["prompt_tokens"] == 3 * fake_token_count(text)


def test_concurrent_identical_requests_make_one_upstream_call(cached, nanogpt):
    nanogpt.latency = 0.4
    batch = ["coalesce me, please!", "and-me-too (if you can)"]
    upstream = sum(fake_token_count(t) for t in batch)
    assert upstream != sum(count_tokens(batch))
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: embed(cached, batch, model="uncached"), range(6)))
    assert len(nanogpt.embedding_requests()) == 1
    for response in results:
        np.testing.assert_array_equal(vectors(response), expected(batch, model="uncached"))
        # The requests that waited count the items as the one that fetched them did.
        assert response.json()["usage"]["prompt_tokens"] == upstream


def test_no_cache_skips_reading_but_refreshes(cached, nanogpt, redis_server):
    text = ["refresh me please"]
    embed(cached, text)
    nanogpt.clear()
    response = embed(cached, text, headers={"cache-control": "no-cache"})
    assert response.headers["x-cache"] == "miss"
    assert sent_upstream(nanogpt) == text
    prefix = cached.settings.CACHE_KEY_PREFIX
    # Cache writes land just after the answer (a background batch): wait for this one.
    wait_until(lambda: bool(redis_server.client().keys(f"{prefix}{MODEL}:*")))
    keys = redis_server.client().keys(f"{prefix}{MODEL}:*")
    ttls = [redis_server.client().ttl(k) for k in keys]
    assert keys and all(t > cached.settings.CACHE_TTL_SECONDS - 5 for t in ttls)


def cached_key(gateway, redis_server, value: bytes) -> bytes:
    """The cache key holding `value`, once the background write has landed."""
    client = redis_server.client()
    pattern = f"{gateway.settings.CACHE_KEY_PREFIX}{MODEL}:*:16:*"
    wait_until(lambda: any(client.get(k) == value for k in client.keys(pattern)))
    return next(k for k in client.keys(pattern) if client.get(k) == value)


def test_cached_values_are_float32_bytes_then_the_items_tokens_with_a_ttl(cached, redis_server):
    text = "bytes, please: float32-little-endian"
    embed(cached, [text])
    vector = fake_vector(MODEL, text, 16).astype("<f4").tobytes()
    key = cached_key(cached, redis_server, vector + struct.pack("<I", fake_token_count(text)))
    assert 0 < redis_server.client().ttl(key) <= cached.settings.CACHE_TTL_SECONDS


def test_an_entry_cached_before_token_counts_is_served_at_the_gateways_count(
    cached, redis_server, nanogpt
):
    text = "cached-by-an-older-gateway: no count"
    embed(cached, [text])
    vector = fake_vector(MODEL, text, 16).astype("<f4").tobytes()
    key = cached_key(cached, redis_server, vector + struct.pack("<I", fake_token_count(text)))
    redis_server.client().set(key, vector, keepttl=True)  # what the gateway wrote before
    nanogpt.clear()
    response = embed(cached, [text, text])
    assert response.headers["x-cache"] == "hit" and nanogpt.embedding_requests() == []
    np.testing.assert_array_equal(vectors(response), expected([text, text]))
    assert response.json()["usage"]["prompt_tokens"] == 2 * count_tokens([text])[0]


def test_ttl_expiry(registry_path, redis_server, nanogpt):
    with ThreadedGateway(
        MODELS_CONFIG=str(registry_path),
        REDIS_URL=redis_server.url,
        RATE_LIMIT_PER_SECOND=0,
        CACHE_TTL_SECONDS=1,
        CACHE_KEY_PREFIX=f"ttl:{uuid.uuid4().hex[:8]}:",
    ) as short_lived:
        assert embed(short_lived, ["brief"]).headers["x-cache"] == "miss"
        assert embed(short_lived, ["brief"]).headers["x-cache"] == "hit"
        time.sleep(1.5)
        assert embed(short_lived, ["brief"]).headers["x-cache"] == "miss"
    assert sent_upstream(nanogpt) == ["brief", "brief"]


def usage(gateway, key):
    response = httpx.get(f"{gateway.url}/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_second_pass_over_a_corpus_sends_nothing_upstream_and_usage_adds_up(cached, nanogpt):
    corpus = [f"corpus line {i} " + "word " * (i % 4) for i in range(40)]
    before = usage(cached, OTHER_CLIENT_KEY)["total"]
    first = embed(cached, corpus, key=OTHER_CLIENT_KEY)
    upstream_first = sum(fake_token_count(t) for t in corpus)
    nanogpt.clear()
    second = embed(cached, corpus, key=OTHER_CLIENT_KEY)
    assert nanogpt.embedding_requests() == []
    assert second.headers["x-cache"] == "hit"
    np.testing.assert_array_equal(vectors(first), vectors(second))
    after = usage(cached, OTHER_CLIENT_KEY)
    total = {k: after["total"][k] - before[k] for k in before}
    prompt = first.json()["usage"]["prompt_tokens"]
    assert total["requests"] == 2
    assert total["upstream_tokens"] == upstream_first  # the second pass sent zero tokens
    assert total["input_tokens"] == prompt + second.json()["usage"]["prompt_tokens"]
    assert total["cached_tokens"] == second.json()["usage"]["prompt_tokens"]
    assert total["cost_usd"] == pytest.approx(upstream_first * 0.02 / 1_000_000)
    rows = after["data"]
    assert {row["key_id"] for row in rows} == {after["key_id"]}
    assert after["key_id"].startswith("key_") and OTHER_CLIENT_KEY not in str(after)


def test_the_internal_token_sees_every_key(cached):
    embed(cached, ["from the first key"], key=CLIENT_KEY)
    embed(cached, ["from the other key"], key=OTHER_CLIENT_KEY)
    everyone = usage(cached, INTERNAL_TOKEN)
    assert everyone["key_id"] is None
    assert len({row["key_id"] for row in everyone["data"]}) >= 2
    mine = usage(cached, CLIENT_KEY)
    assert len({row["key_id"] for row in mine["data"]}) == 1


def test_usage_rejects_bad_dates(cached):
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    for query, param in [
        ("start=yesterday", "start"),
        ("start=2026-02-02&end=2026-02-01", "end"),
        ("start=2020-01-01&end=2026-01-01", "start"),
    ]:
        response = httpx.get(f"{cached.url}/v1/usage?{query}", headers=auth)
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert httpx.get(f"{cached.url}/v1/usage").status_code == 401


def test_redis_stopped_means_bypass_not_errors(tmp_path_factory, registry_path, nanogpt):
    with (
        RedisServer() as own_redis,
        ThreadedGateway(
            MODELS_CONFIG=str(registry_path),
            REDIS_URL=own_redis.url,
            RATE_LIMIT_PER_SECOND=0,
            CACHE_TIMEOUT_MS=100,
        ) as gateway,
    ):
        texts = ["survive an outage", "and another"]
        embed(gateway, texts)
        assert embed(gateway, texts).headers["x-cache"] == "hit"
        own_redis.stop()
        for attempt in range(4):
            batch = [*texts, f"new {attempt}"]
            np.testing.assert_array_equal(vectors(embed(gateway, batch)), expected(batch))
        own_redis.start()
        time.sleep(1.1)  # the bypass window after a failure
        embed(gateway, ["after the outage"])
        assert embed(gateway, ["after the outage"]).headers["x-cache"] == "hit"


def test_a_hit_a_miss_and_a_partial_hit_report_the_upstreams_usage(cached, nanogpt):
    """The same 100 inputs through the OpenAI SDK: the same prompt_tokens however many of them
    the cache answered, and that figure is the upstream's count (the fake counts words), not
    the gateway's cl100k count."""
    client = openai.OpenAI(base_url=f"{cached.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    batch = [f"input {i}: semi-colon;separated, hyphen-ated (and 0x{i:04x})" for i in range(100)]
    upstream = sum(fake_token_count(t) for t in batch)
    assert upstream != sum(count_tokens(batch))  # the two counts tell the paths apart
    before = usage(cached, CLIENT_KEY)["total"]

    def create(texts, **extra):
        raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts, **extra)
        return raw.headers["x-cache"], raw.parse()

    seen = [create(batch[:50])]  # a miss that warms half of the batch
    nanogpt.clear()
    seen.append(create(batch))
    assert sent_upstream(nanogpt) == batch[50:]
    seen.append(create(batch))
    seen.append(create(batch, extra_headers={"cache-control": "no-cache"}))
    seen.append(create(batch))  # now cached from the miss just before
    assert [status for status, _ in seen] == ["miss", "partial", "hit", "miss", "hit"]
    assert seen[0][1].usage.prompt_tokens == sum(fake_token_count(t) for t in batch[:50])
    for _, response in seen[1:]:
        assert response.usage.prompt_tokens == upstream
        assert response.usage.total_tokens == upstream
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_array_equal(got, expected(batch))

    # What usage records and charges agrees with what the responses said.
    after = usage(cached, CLIENT_KEY)["total"]
    total = {k: after[k] - before[k] for k in before}
    assert total["requests"] == len(seen)
    assert total["input_tokens"] == sum(r.usage.prompt_tokens for _, r in seen)
    assert total["upstream_tokens"] == 2 * upstream  # the first half, the second half, a miss
    # The partial's hits (the first half, at what its miss reported), then two whole hits.
    assert total["cached_tokens"] == seen[0][1].usage.prompt_tokens + 2 * upstream
    assert total["cost_usd"] == pytest.approx(2 * upstream * 0.02 / 1_000_000)
