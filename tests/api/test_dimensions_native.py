"""`dimensions` equal to the model's own width, through the openai SDK on real sockets with a
real Redis cache: accepted on every model (mem0 and others send it whenever a width is
configured), never sent upstream, and the same request as one without it in the cache and in
usage."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.conftest import OTHER_CLIENT_KEY
from tests.state.test_cache import cached, expected, usage

__all__ = ["cached"]  # the cache tests' gateway: real Redis, the standard models, width 16

NATIVE = 16


@pytest.fixture
def client(cached) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cached.url}/v1", api_key=OTHER_CLIENT_KEY, max_retries=0)


@pytest.mark.parametrize(
    ("model", "fake"),
    [
        ("aiml-only", "aiml"),  # no supports_dimensions
        ("text-embedding-3-small", "nanogpt"),  # supports_dimensions
    ],
)
def test_the_native_width_is_a_no_op_upstream_in_the_cache_and_in_usage(
    request, cached, client, model, fake
):
    upstream = request.getfixturevalue(fake)
    upstream_model = "upstream-aiml-name" if model == "aiml-only" else model
    text = f"native width for {model}"
    before = usage(cached, OTHER_CLIENT_KEY)["total"]

    raw = client.embeddings.with_raw_response.create(
        model=model, input=[text], dimensions=NATIVE, encoding_format="float"
    )
    with_dimensions = raw.parse()
    assert raw.headers["x-cache"] == "miss"
    sent = upstream.embedding_requests()
    assert len(sent) == 1 and "dimensions" not in sent[0].json
    got = np.array([d.embedding for d in with_dimensions.data], dtype=np.float32)
    np.testing.assert_array_equal(got, np.array([expected([text], upstream_model)[0]]))

    upstream.clear()
    raw = client.embeddings.with_raw_response.create(
        model=model, input=[text], encoding_format="float"
    )
    without = raw.parse()
    assert raw.headers["x-cache"] == "hit"  # the same cache entry
    assert upstream.embedding_requests() == []
    assert [d.embedding for d in without.data] == [d.embedding for d in with_dimensions.data]
    assert without.usage == with_dimensions.usage

    after = usage(cached, OTHER_CLIENT_KEY)["total"]
    total = {k: after[k] - before[k] for k in before}
    assert total["requests"] == 2
    assert total["upstream_tokens"] == with_dimensions.usage.prompt_tokens  # one call
    assert total["cached_tokens"] == without.usage.prompt_tokens


@pytest.mark.parametrize(("model", "dimensions"), [("aiml-only", 8), ("aiml-only", 17)])
def test_any_other_width_is_still_refused_where_the_model_cannot_shorten(
    client, aiml, model, dimensions
):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=model, input="x", dimensions=dimensions)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "dimensions"
    assert f"other than its own, {NATIVE}" in error["message"]
    assert aiml.embedding_requests() == []


def test_a_shorter_width_still_goes_upstream_where_the_model_can_shorten(client, nanogpt):
    response = client.embeddings.create(
        model="text-embedding-3-small", input="eight wide", dimensions=8, encoding_format="float"
    )
    assert len(response.data[0].embedding) == 8
    assert nanogpt.embedding_requests()[-1].json["dimensions"] == 8
