"""Each item's share of the usage its upstream call reported (what the cache keeps per item)."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.job import EmbeddingJob
from app.core.routing.progress import JobProgress
from app.core.tokens import count_tokens
from app.providers import UpstreamResult
from app.runtime.build import read_registry
from tests.harness import model_entry, write_registry

DIMS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("shares") / "models.yaml"
    provider = {"type": "openai", "base_url": "http://127.0.0.1:1", "api_key": "k"}
    entry = model_entry([{"provider": "up", "model": "m"}], dimensions=DIMS)
    return read_registry(write_registry(path, {"up": provider}, {"m": entry}), {}).models["m"]


def job_of(model, texts: list[str]) -> EmbeddingJob:
    return EmbeddingJob(model, texts, None, None, None, False, "req-shares")


def progress_with(job: EmbeddingJob, calls: list[tuple[list[int], int | None]]) -> JobProgress:
    progress = JobProgress(job)
    for chunk, tokens in calls:
        progress.record(chunk, UpstreamResult(np.zeros((len(chunk), DIMS), np.float32), tokens))
    return progress


def test_each_call_is_shared_among_its_items_by_the_gateways_count(model):
    texts = ["one", "two words", "a somewhat longer sentence of words", "x", "y z"]
    own = count_tokens(texts)
    progress = progress_with(job_of(model, texts), [([0, 2, 4], 100), ([1], 7), ([3], 5)])
    shares = progress.item_tokens()
    assert shares is not None and progress.upstream_tokens() == 112
    assert (shares[1], shares[3]) == (7, 5)  # a call of one item: all of it
    first = [shares[i] for i in (0, 2, 4)]
    assert sum(first) == 100  # no token lost or invented
    weights = [own[i] for i in (0, 2, 4)]
    for share, weight in zip(first, weights, strict=True):  # in proportion, rounded either way
        assert abs(share - 100 * weight / sum(weights)) < 1


def test_shares_are_split_only_when_asked_for(model):
    job = job_of(model, ["a b", "c d e", "f"])
    progress = progress_with(job, [([0, 1], 9), ([2], 1)])
    shares = progress.item_tokens()
    assert shares is not None and job._token_counts is None  # nothing tokenised yet
    assert shares[2] == 1 and shares[0] + shares[1] == 9
    assert job._token_counts is not None


def test_a_call_without_usage_leaves_no_shares(model):
    progress = progress_with(job_of(model, ["a", "b", "c"]), [([0], 3), ([1, 2], None)])
    assert progress.item_tokens() is None and progress.upstream_tokens() is None
