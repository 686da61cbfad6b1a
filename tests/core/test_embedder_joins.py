"""Identical items in flight are fetched once; when the requests a later one joined go away,
it fetches their items itself, and each item keeps its own vector (in the answer and in what
goes to the cache), in whatever order the items were joined."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

import numpy as np
import pytest

from app.core.embedder import Embedder
from app.core.job import EmbeddingJob
from app.core.routing.router import RoutedResult
from app.runtime.build import read_registry
from app.state.cache import CacheEntry, item_digest, item_key
from tests.harness import model_entry, write_registry

DIMS = 4


def vector_of(text: str) -> np.ndarray:
    digest = hashlib.sha256(text.encode()).digest()
    return np.frombuffer(digest[: 4 * DIMS], dtype=np.uint32).astype(np.float32)


class _HeldRouter:
    """Answers each routed job with each text's own vector, once the test lets it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.routed: list[list[str]] = []

    async def embed(self, job: EmbeddingJob, timeout: float) -> RoutedResult:
        assert job.texts is not None
        self.routed.append(list(job.texts))
        await self.release.wait()
        return RoutedResult(np.stack([vector_of(t) for t in job.texts]), None)


class _RecordingCache:
    """The cache's write side only (the test reads nothing from it)."""

    def __init__(self) -> None:
        self.written: dict[str, CacheEntry] = {}

    async def put(self, entries: Mapping[str, CacheEntry]) -> None:
        self.written.update(entries)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("joins") / "models.yaml"
    provider = {"type": "openai", "base_url": "http://127.0.0.1:1", "api_key": "k"}
    entry = model_entry([{"provider": "up", "model": "m"}], dimensions=DIMS)
    return read_registry(write_registry(path, {"up": provider}, {"m": entry}), {}).models["m"]


def test_items_joined_out_of_order_then_orphaned_keep_their_own_vectors(model) -> None:
    async def scenario() -> None:
        router, cache = _HeldRouter(), _RecordingCache()
        embedder = Embedder(router, cache)  # type: ignore[arg-type]

        def job(texts: list[str]) -> EmbeddingJob:
            return EmbeddingJob(model, texts, None, None, None, False, "req")

        async def embed(texts: list[str]) -> np.ndarray:
            embedded = await embedder.embed(job(texts), 30.0, read_cache=False)
            return embedded.vectors

        first = asyncio.create_task(embed(["x1", "x3"]))
        second = asyncio.create_task(embed(["x2"]))
        while len(router.routed) < 2:
            await asyncio.sleep(0)
        # Joins the first request's future for x1 and x3, the second's for x2.
        third = asyncio.create_task(embed(["x1", "x2", "x3"]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(router.routed) == 2  # joined, nothing routed for it yet
        first.cancel()
        second.cancel()
        while len(router.routed) < 3:
            await asyncio.sleep(0)
        router.release.set()
        vectors = await third

        assert router.routed[2] == ["x1", "x2", "x3"]  # fetched itself, in input order
        texts = ["x1", "x2", "x3"]
        np.testing.assert_array_equal(vectors, np.stack([vector_of(t) for t in texts]))
        for text in texts:
            key = item_key(model, DIMS, item_digest(text), None)
            np.testing.assert_array_equal(cache.written[key].vector, vector_of(text))

    asyncio.run(scenario())
