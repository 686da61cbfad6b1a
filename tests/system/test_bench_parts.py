"""The benchmark's own parts, without running it: the counting fake, the vector check, options.

tests/system/test_bench_smoke.py runs the whole benchmark; these pin down the pieces its throughput
figures rest on (a miscounted call or a vector check that passes anything would make every
micro-batching figure meaningless), in well under a second, with no peer installed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import orjson
import pytest

from bench import run
from bench.fake_server import CountingUpstream
from bench.loadgen import VectorCheck, make_body, texts
from tests.fakes import fake_vector

KEY = "bench-key"
DIMS = 8
MODEL = "bench-batch"


@pytest.fixture
def fake() -> Iterator[CountingUpstream]:
    with CountingUpstream("openai", api_key=KEY, default_dims=DIMS, record=False) as server:
        yield server


def post(fake: CountingUpstream, body: bytes) -> httpx.Response:
    return httpx.post(
        fake.embeddings_url,
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )


def stats(fake: CountingUpstream) -> dict[str, int]:
    return dict(httpx.get(fake.url + "/bench/stats").json())


def test_the_fake_counts_calls_and_inputs_and_its_rate_limit(fake: CountingUpstream) -> None:
    fake.max_requests_per_second = 2
    answers = [post(fake, make_body("r", n, MODEL, 3, "float")).status_code for n in range(3)]
    assert answers == [200, 200, 429]
    # Every call counts, the refused one too; only the answered ones' inputs were parsed.
    assert stats(fake) == {"calls": 3, "inputs": 6, "rate_limited": 1}


def test_the_vector_check_passes_the_fakes_own_answers_and_catches_a_swap(
    fake: CountingUpstream,
) -> None:
    check = VectorCheck(MODEL, DIMS)
    answers = [post(fake, make_body("r", n, MODEL, 0, "base64", True)).content for n in (1, 2)]
    check.check(1, 0, answers[0])
    check.check(2, 0, answers[1])
    assert (check.checked, check.wrong) == (2, 0)
    check.check(1, 0, answers[1])  # request 1 handed request 2's vector
    assert (check.checked, check.wrong) == (3, 1)
    # The fake answered for the text after the unique prefix: what the check computes too.
    expected = fake_vector(MODEL, texts(2, 0, distinct=True)[0], DIMS).tobytes()
    assert base64.b64decode(orjson.loads(answers[1])["data"][0]["embedding"]) == expected


def test_peers_options() -> None:
    assert run.parse_args([]).peers == []
    assert run.parse_args(["--peers"]).peers == ["nginx", "portkey", "stack-floor"]
    assert run.parse_args(["--peers", "all"]).peers == [
        "nginx",
        "portkey",
        "litellm",
        "stack-floor",
        "infinity",
    ]
    assert run.parse_args(["--litellm", "--peers", "nginx,litellm"]).peers == ["nginx", "litellm"]
    assert run.parse_args(["--litellm"]).peers == ["litellm"]
    with pytest.raises(SystemExit):
        run.parse_args(["--peers", "envoy"])
