"""The embedding cache, de-duplication, coalescing and usage accounting, on real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

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
    embed(cached, corpus[::3])  # warm: items 0, 3, 6, 9
    warm = set(corpus[::3])
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(corpus))
        batch = [corpus[i] for i in order[:6]]
        nanogpt.clear()
        response = embed(cached, batch)
        np.testing.assert_array_equal(vectors(response), expected(batch))
        misses = [t for t in batch if t not in warm]
        assert sent_upstream(nanogpt) == misses  # only the misses, in input order
        status = "hit" if not misses else ("miss" if len(misses) == len(batch) else "partial")
        assert response.headers["x-cache"] == status
        warm |= set(batch)
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


def test_concurrent_identical_requests_make_one_upstream_call(cached, nanogpt):
    nanogpt.latency = 0.4
    batch = ["coalesce me", "and me"]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: embed(cached, batch, model="uncached"), range(6)))
    assert len(nanogpt.embedding_requests()) == 1
    for response in results:
        np.testing.assert_array_equal(vectors(response), expected(batch, model="uncached"))


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


def test_cached_values_are_float32_bytes_with_a_ttl(cached, redis_server):
    embed(cached, ["bytes please"])
    client = redis_server.client()
    wanted = fake_vector(MODEL, "bytes please", 16).astype("<f4").tobytes()
    pattern = f"{cached.settings.CACHE_KEY_PREFIX}{MODEL}:*:16:*"
    wait_until(lambda: any(client.get(k) == wanted for k in client.keys(pattern)))
    key = next(
        k
        for k in client.keys(f"{cached.settings.CACHE_KEY_PREFIX}{MODEL}:*:16:*")
        if client.get(k) == fake_vector(MODEL, "bytes please", 16).astype("<f4").tobytes()
    )
    assert 0 < client.ttl(key) <= cached.settings.CACHE_TTL_SECONDS


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
