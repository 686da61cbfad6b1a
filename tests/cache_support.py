"""The cache's ordering check, shared by the per-mode tests (test_redis_modes.py) and the cache's
own (test_cache.py): batches of warm and cold items in random orders get exactly an uncached
run's vectors, and only the misses go upstream, in input order."""

from __future__ import annotations

import httpx
import numpy as np

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, fake_vector

DIMS = 16


def check_mixed_orders(
    url: str, upstream: FakeUpstream, corpus: list[str], model: str, *, rounds: int, take: int
) -> None:
    """Warm every third item, then `rounds` seeded shuffles of `take` items each."""
    embed(url, model, corpus[::3])
    warm = set(corpus[::3])
    for seed in range(rounds):
        order = np.random.default_rng(seed).permutation(len(corpus))
        batch = [corpus[i] for i in order[:take]]
        upstream.clear()
        response = embed(url, model, batch)
        data = response.json()["data"]
        assert [d["index"] for d in data] == list(range(len(data)))
        got = np.array([d["embedding"] for d in data], dtype=np.float32)
        want = np.array([fake_vector(model, t, DIMS) for t in batch])
        np.testing.assert_array_equal(got, want)
        misses = [t for t in batch if t not in warm]
        sent = [item for r in upstream.embedding_requests() for item in r.json["input"]]
        assert sent == misses  # only the misses, in input order
        status = "hit" if not misses else ("miss" if len(misses) == len(batch) else "partial")
        assert response.headers["x-cache"] == status
        warm |= set(batch)


def embed(url: str, model: str, texts: list[str]) -> httpx.Response:
    response = httpx.post(
        f"{url}/v1/embeddings",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": model, "input": texts, "encoding_format": "float"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response
