"""Hedged requests on real sockets: a slow first route is raced, the loser is cancelled, the
budget holds under sustained slowness, a 400 is never hedged, and usage counts both calls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from aiohttp import web

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, Fault, fake_vector
from tests.harness import ThreadedGateway, model_entry, write_registry
from tests.server.test_operations import sample, scrape

USAGE_KEY = "sk-hedge-usage-key-0001"
DEADLINE = 3.0
DIMS = 16


class HangUpWatcher:
    """An OpenAI-shaped upstream that answers after `delay` seconds and counts the calls whose
    client hung up first. Written here because FakeUpstream cannot tell: its handlers run to
    the end whatever the client does (aiohttp's default), while this one is cancelled."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = 0
        self.hung_up = 0
        self.answered = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.received = self.hung_up = self.answered = 0

    async def _handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        with self._lock:
            self.received += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            with self._lock:
                self.hung_up += 1
            raise
        with self._lock:
            self.answered += 1
        texts = payload["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector("slow", t, DIMS).tolist()}
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response({"object": "list", "data": data, "usage": usage})

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()

    def __enter__(self) -> HangUpWatcher:
        self._thread.start()
        assert self._ready.wait(10), "watcher did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        assert loop is not None and self._runner is not None
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def slow() -> Iterator[HangUpWatcher]:
    with HangUpWatcher(delay=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def primary() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(scope="module")
def secondary() -> Iterator[FakeUpstream]:
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset(slow, primary, secondary) -> Iterator[None]:
    yield
    slow.reset()
    primary.clear()
    secondary.clear()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, slow, primary, secondary) -> Iterator[ThreadedGateway]:
    policy = {"timeout_seconds": 1.0, "cooldown_failures": 100, "backoff_base_seconds": 0.01}
    providers = {
        "slow": {"type": "nanogpt", "base_url": slow.base_url, "api_key": "k0", **policy},
        "primary": {"type": "nanogpt", "base_url": primary.base_url, "api_key": "k1", **policy},
        "secondary": {"type": "aiml", "base_url": secondary.base_url, "api_key": "k2", **policy},
    }
    fast = {"provider": "secondary", "model": "fast-name"}

    def hedged(provider: str, **knobs: object) -> dict:
        return model_entry([{"provider": provider, "model": "first-name", **knobs}, fast])

    models = {
        # The slow route's own timeout (5 s) would let it answer after 2 s: only a hedge helps.
        "hedged": hedged("slow", hedge_after_ms=200, timeout_seconds=5),
        "hedged-usage": hedged("slow", hedge_after_ms=200, timeout_seconds=5),
        "budgeted": hedged("primary", hedge_after_ms=50, hedge_max_ratio=0.2),
        "hedged-fast-fail": hedged("primary", hedge_after_ms=50),
        # One route, so the fair share of the deadline does not fail it over either.
        "unhedged": model_entry(
            [{"provider": "slow", "model": "first-name", "timeout_seconds": 5}]
        ),
    }
    path = write_registry(tmp_path_factory.mktemp("hedging") / "models.yaml", providers, models)
    with ThreadedGateway(
        MODELS_CONFIG=str(path),
        GATEWAY_API_KEYS=f"{CLIENT_KEY},{USAGE_KEY}",
        REQUEST_TIMEOUT_SECONDS=DEADLINE,
        RATE_LIMIT_PER_SECOND=0,
    ) as server:
        yield server


def embed(gateway, model: str, texts: list[str], key: str = CLIENT_KEY) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "input": texts, "encoding_format": "float"},
        timeout=30,
    )


def vectors(response: httpx.Response) -> np.ndarray:
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def expected(upstream_model: str, texts: list[str]) -> np.ndarray:
    return np.array([fake_vector(upstream_model, t, DIMS) for t in texts])


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def hedged_calls(text: str, model: str, provider: str, outcome: str) -> float:
    name = "embeddings_gateway_hedged_calls_total"
    return sample(text, name, model=model, provider=provider, outcome=outcome)


TEXTS = ["alpha beta", "gamma"]


def test_a_slow_first_route_is_hedged_and_its_call_cancelled(gateway, slow, secondary):
    before = scrape(gateway.url)
    started = time.monotonic()
    response = embed(gateway, "hedged", TEXTS)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(vectors(response), expected("fast-name", TEXTS))
    assert elapsed < 1.5  # the slow route answers only after 2 s
    assert slow.received == 1 and len(secondary.embedding_requests()) == 1
    assert wait_for(lambda: slow.hung_up == 1)  # the slow upstream saw the gateway hang up
    assert slow.answered == 0
    after = scrape(gateway.url)
    for provider, outcome in (("slow", "cancelled"), ("secondary", "won")):
        grown = hedged_calls(after, "hedged", provider, outcome)
        assert grown - hedged_calls(before, "hedged", provider, outcome) == 1


def test_without_hedging_the_slow_route_is_waited_for(gateway, slow):
    started = time.monotonic()
    response = embed(gateway, "unhedged", TEXTS)
    assert response.status_code == 200
    np.testing.assert_array_equal(vectors(response), expected("slow", TEXTS))
    assert time.monotonic() - started >= 2.0


def test_usage_counts_both_calls_of_a_hedge(gateway, slow):
    response = embed(gateway, "hedged-usage", ["alpha beta"], key=USAGE_KEY)
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 2  # the client is billed its input
    assert wait_for(lambda: slow.hung_up == 1)
    report = httpx.get(
        f"{gateway.url}/v1/usage", headers={"authorization": f"Bearer {USAGE_KEY}"}
    ).json()
    (row,) = [r for r in report["data"] if r["model"] == "hedged-usage"]
    assert row["input_tokens"] == 2
    # The cancelled call was sent (2 cl100k tokens), the winner reported 2: both may be billed.
    assert row["upstream_tokens"] == 4
    assert row["cost_usd"] == pytest.approx(4 * 0.02 / 1_000_000)


def test_the_hedge_budget_holds_under_sustained_slowness(gateway, primary, secondary):
    primary.latency = 0.25  # every call is slower than hedge_after_ms (50 ms)
    before = scrape(gateway.url)
    for i in range(15):
        response = embed(gateway, "budgeted", [f"text {i}"])
        assert response.status_code == 200
    # hedge_max_ratio 0.2 of 15 calls: the first (one is always allowed), the 10th, the 15th.
    assert len(secondary.embedding_requests()) == 3
    assert len(primary.embedding_requests()) == 15
    after = scrape(gateway.url)
    hedges = sum(
        hedged_calls(after, "budgeted", "secondary", outcome)
        - hedged_calls(before, "budgeted", "secondary", outcome)
        for outcome in ("won", "lost", "cancelled")
    )
    assert hedges == 3


def test_an_upstream_400_about_the_input_is_never_hedged(gateway, primary, secondary):
    primary.add_fault(Fault.http_status(400), times=None)
    response = embed(gateway, "hedged-fast-fail", TEXTS)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_rejected_input"
    time.sleep(0.2)  # past hedge_after_ms: a hedge, had one been started, would have arrived
    assert secondary.embedding_requests() == []


def test_a_failed_hedge_leaves_the_first_route_to_answer(gateway, primary, secondary):
    primary.latency = 0.3
    secondary.add_fault(Fault.http_status(500), times=None)
    response = embed(gateway, "hedged-fast-fail", TEXTS)
    assert response.status_code == 200
    np.testing.assert_array_equal(vectors(response), expected("first-name", TEXTS))


def test_both_routes_hanging_with_hedging_on_is_a_504_within_the_deadline(
    gateway, primary, secondary
):
    primary.add_fault(Fault.hang(10), times=None)
    secondary.add_fault(Fault.hang(10), times=None)
    started = time.monotonic()
    response = embed(gateway, "hedged-fast-fail", TEXTS)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert time.monotonic() - started < DEADLINE + 0.5
