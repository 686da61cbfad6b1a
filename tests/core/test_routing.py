"""Failover, retries, Retry-After, deadlines, cooldowns and batch splitting, on real sockets."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.main import create_app
from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, Fault, fake_token_count, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
DEADLINE = 2.0


@pytest.fixture(scope="module")
def primary() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(scope="module")
def secondary() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset(primary, secondary) -> Iterator[None]:
    yield
    primary.clear()
    secondary.clear()


class ShiftedClock:
    """Real monotonic time plus jumps a test makes, so cooldowns pass without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class ClockedGateway(ThreadedGateway):
    """A ThreadedGateway whose router runs on the given clock."""

    def __init__(self, clock: ShiftedClock, **settings: object) -> None:
        super().__init__(**settings)
        self.server.config.app = create_app(self.settings, clock=clock)


@pytest.fixture(scope="module")
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, primary, secondary, clock) -> Iterator[ThreadedGateway]:
    policy = {
        "timeout_seconds": 0.4,
        "max_attempts": 2,
        "backoff_base_seconds": 0.01,
        "cooldown_failures": 100,
        "cooldown_seconds": 1.0,
    }
    providers = {
        "primary": {"type": "nanogpt", "base_url": primary.base_url, "api_key": "k1", **policy},
        "secondary": {"type": "aiml", "base_url": secondary.base_url, "api_key": "k2", **policy},
        "batching": {
            "type": "nanogpt",
            "base_url": primary.base_url,
            "api_key": "k3",
            **policy,
            "timeout_seconds": 5,
            "max_batch_size": 100,
            "max_concurrency_per_request": 4,
            "max_concurrency": 4,
        },
    }
    routes = [
        {"provider": "primary", "model": "primary-name"},
        {"provider": "secondary", "model": "secondary-name"},
    ]
    cooling = [
        {"provider": "primary", "model": "primary-name", "cooldown_failures": 2, "max_attempts": 1},
        {"provider": "secondary", "model": "secondary-name"},
    ]
    models = {
        "two-routes": model_entry(routes),
        "cooling": model_entry(cooling),
        "one-route": model_entry(routes[:1]),
        "batched": model_entry([{"provider": "batching", "model": "batched-name"}]),
        "batched-once": model_entry(
            [{"provider": "batching", "model": "batched-name", "max_attempts": 1}]
        ),
        # Its own timeout is longer than the whole deadline: only the fair share saves route 2.
        "greedy-first": model_entry(
            [
                {"provider": "primary", "model": "primary-name", "timeout_seconds": 30},
                {"provider": "secondary", "model": "secondary-name"},
            ]
        ),
        # 0.3 s for a short input, 1.3 s for ~1000 tokens of work.
        "scaled": model_entry(
            [
                {
                    "provider": "primary",
                    "model": "primary-name",
                    "timeout_seconds": 0.3,
                    "timeout_per_1k_tokens_seconds": 1.0,
                    "max_attempts": 1,
                },
                {"provider": "secondary", "model": "secondary-name"},
            ]
        ),
        "batched-then-secondary": model_entry(
            [
                {"provider": "batching", "model": "batched-name", "max_attempts": 1},
                {"provider": "secondary", "model": "secondary-name"},
            ]
        ),
    }
    path = write_registry(tmp_path_factory.mktemp("routing") / "models.yaml", providers, models)
    with ClockedGateway(
        clock,
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=CLIENT_KEY,
        REQUEST_TIMEOUT_SECONDS=DEADLINE,
    ) as server:
        yield server


def embed(gateway, model: str, texts: list[str]) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers=AUTH,
        json={"model": model, "input": texts, "encoding_format": "float"},
        timeout=30,
    )


def vectors(response: httpx.Response) -> np.ndarray:
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def expected(upstream_model: str, texts: list[str]) -> np.ndarray:
    return np.array([fake_vector(upstream_model, t, 16) for t in texts])


TEXTS = ["alpha", "beta gamma", "delta"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault.http_status(500),
        Fault.http_status(503),
        Fault.http_status(429, {"retry-after-ms": "50"}),
        Fault.http_status(429, {"Retry-After": "30"}),  # longer than the deadline: fail over now
        Fault.hang(1.0),
        Fault.non_json(),
        Fault.fewer_vectors(),
        Fault.wrong_dims(),
        Fault.nan(),
        Fault.drop(),
        Fault.truncated(),
    ],
    ids=lambda f: f"{f.kind}-{f.status}-{f.headers}",
)
def test_each_fault_on_the_first_route_ends_in_the_seconds_vectors(
    gateway, primary, secondary, fault
):
    primary.add_fault(fault, times=None)
    started = time.monotonic()
    response = embed(gateway, "two-routes", TEXTS)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(vectors(response), expected("secondary-name", TEXTS))
    assert len(secondary.embedding_requests()) == 1
    assert elapsed < DEADLINE


def test_a_timed_out_call_fails_over_at_once_instead_of_retrying(gateway, primary, secondary):
    primary.add_fault(Fault.hang(5.0), times=None)
    response = embed(gateway, "two-routes", TEXTS)
    assert response.status_code == 200
    np.testing.assert_array_equal(vectors(response), expected("secondary-name", TEXTS))
    assert len(primary.embedding_requests()) == 1  # max_attempts is 2: not spent on a hang


def test_a_timeout_on_the_last_route_is_still_retried(gateway, primary):
    primary.add_fault(Fault.hang(5.0))  # once: the retry answers
    response = embed(gateway, "one-route", TEXTS)
    assert response.status_code == 200
    assert len(primary.embedding_requests()) == 2


def test_a_hung_route_leaves_the_next_route_its_fair_share_of_the_deadline(
    gateway, primary, secondary
):
    primary.add_fault(Fault.hang(5.0), times=None)
    started = time.monotonic()
    response = embed(gateway, "greedy-first", TEXTS)
    assert response.status_code == 200, response.text  # before: 504 after the whole deadline
    np.testing.assert_array_equal(vectors(response), expected("secondary-name", TEXTS))
    assert time.monotonic() - started < DEADLINE


def test_a_call_gets_more_time_for_more_work(gateway, primary, secondary):
    primary.latency = 0.6  # too slow for a short input's 0.3 s, in time for 1.3 s
    short = embed(gateway, "scaled", ["hi"])
    np.testing.assert_array_equal(vectors(short), expected("secondary-name", ["hi"]))
    long_text = "x" * 4000  # ~1000 tokens by the length estimate
    long = embed(gateway, "scaled", [long_text])
    np.testing.assert_array_equal(vectors(long), expected("primary-name", [long_text]))


def test_shuffled_indices_are_put_back_in_order(gateway, primary, secondary):
    primary.add_fault(Fault.shuffled())
    response = embed(gateway, "two-routes", TEXTS)
    np.testing.assert_array_equal(vectors(response), expected("primary-name", TEXTS))
    assert secondary.embedding_requests() == []


def test_retry_after_that_fits_is_waited_for_on_the_same_route(gateway, primary, secondary):
    primary.add_fault(Fault.http_status(429, {"retry-after-ms": "300"}))
    started = time.monotonic()
    response = embed(gateway, "two-routes", TEXTS)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3
    assert len(primary.embedding_requests()) == 2
    assert secondary.embedding_requests() == []
    np.testing.assert_array_equal(vectors(response), expected("primary-name", TEXTS))


def test_retryable_failure_is_retried_before_failing_over(gateway, primary, secondary):
    primary.add_fault(Fault.http_status(502))
    response = embed(gateway, "two-routes", TEXTS)
    assert response.status_code == 200
    assert len(primary.embedding_requests()) == 2
    assert secondary.embedding_requests() == []


def test_both_routes_failing_is_a_clean_502(gateway, primary, secondary):
    primary.add_fault(Fault.http_status(500), times=None)
    secondary.add_fault(Fault.non_json(), times=None)
    response = embed(gateway, "two-routes", TEXTS)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "NanoGPT answered HTTP 500" in message
    assert "AI/ML API sent a malformed response" in message
    assert "<html>" not in message


def test_both_routes_hanging_is_a_504_within_the_deadline(gateway, primary, secondary):
    primary.add_fault(Fault.hang(5.0), times=None)
    secondary.add_fault(Fault.hang(5.0), times=None)
    started = time.monotonic()
    response = embed(gateway, "two-routes", TEXTS)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert time.monotonic() - started < DEADLINE + 0.5


def test_the_request_deadline_bounds_retries_too(gateway, primary):
    primary.add_fault(Fault.http_status(429, {"retry-after-ms": "1500"}), times=None)
    started = time.monotonic()
    response = embed(gateway, "one-route", TEXTS)
    assert response.status_code in (502, 504)
    assert time.monotonic() - started < DEADLINE + 0.5


def test_cooldown_skips_a_dead_route_then_lets_one_trial_through(
    gateway, primary, secondary, clock
):
    primary.add_fault(Fault.http_status(500), times=None)
    for _ in range(2):  # two consecutive failures open the cooldown
        assert embed(gateway, "cooling", TEXTS).status_code == 200
    assert len(primary.embedding_requests()) == 2
    for _ in range(3):
        assert embed(gateway, "cooling", TEXTS).status_code == 200
    assert len(primary.embedding_requests()) == 2  # skipped without being touched
    primary.clear()  # the route is healthy again
    clock.advance(1.1)  # past cooldown_seconds
    response = embed(gateway, "cooling", TEXTS)
    np.testing.assert_array_equal(vectors(response), expected("primary-name", TEXTS))
    assert len(primary.embedding_requests()) == 1  # the trial
    embed(gateway, "cooling", TEXTS)
    assert len(primary.embedding_requests()) == 2  # closed again


def test_a_large_request_is_split_with_bounded_concurrency(gateway, primary):
    texts = [f"item {i} {'w ' * (i % 5)}" for i in range(2048)]
    primary.latency = 0.02
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers=AUTH,
        json={"model": "batched", "input": texts, "encoding_format": "base64"},
        timeout=60,
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["data"]) == 2048
    got = np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    np.testing.assert_array_equal(got, expected("batched-name", texts))
    calls = primary.embedding_requests()
    assert len(calls) == 21
    assert all(len(call.json["input"]) <= 100 for call in calls)
    assert 1 < primary.max_in_flight <= 4
    assert body["usage"]["prompt_tokens"] == sum(fake_token_count(t) for t in texts)


def test_a_failed_chunk_moves_alone_to_the_next_route(gateway, primary, secondary):
    texts = [f"t{i}" for i in range(250)]
    primary.add_fault(Fault.http_status(500))  # one of the three chunks fails on the first route
    response = embed(gateway, "batched-then-secondary", texts)
    assert response.status_code == 200
    got = vectors(response)
    served_by_secondary = {t for call in secondary.embedding_requests() for t in call.json["input"]}
    assert 0 < len(served_by_secondary) <= 100
    for i, text in enumerate(texts):
        name = "secondary-name" if text in served_by_secondary else "batched-name"
        np.testing.assert_array_equal(got[i], fake_vector(name, text, 16))


def test_no_partial_answer_when_a_chunk_fails_everywhere(gateway, primary):
    texts = [f"t{i}" for i in range(250)]
    primary.add_fault(Fault.http_status(500), times=1)
    response = embed(gateway, "batched-once", texts)
    assert response.status_code == 502
    assert len(primary.embedding_requests()) == 3
    assert "data" not in response.json()


def test_integers_and_base64_in_upstream_vectors_are_read_correctly(gateway, primary):
    # simdjson hands float arrays over as buffers; JSON integers must survive that too.
    from app.providers.validation import MalformedResponse, parse_embeddings

    raw = (
        b'{"data": [{"index": 1, "embedding": [1, 2.5]},'
        b' {"index": 0, "embedding": "AACAPwAAAEA="}]}'
    )
    matrix, usage = parse_embeddings(raw, 2, 2)
    np.testing.assert_array_equal(matrix, np.array([[1.0, 2.0], [1.0, 2.5]], dtype=np.float32))
    assert usage is None
    for bad in (
        b'{"data": [{"index": 0, "embedding": [1, "x"]}]}',
        b'{"data": [{"index": 0, "embedding": [1e400, 0]}]}',
        b'{"data": [{"index": 0, "embedding": [3.5e38, 3.5e38]}]}',
        b'{"data": [{"index": 0}]}',
        b'{"data": {}}',
        b"[]",
    ):
        with pytest.raises(MalformedResponse):
            parse_embeddings(bad, 1, 2)
