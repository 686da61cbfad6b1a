"""The pure parts of routing policy: call timeouts, hedge delay and budget, route order."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.config.registry import (
    RegistryError,
    Route,
    RouteConfig,
    RoutePolicy,
)
from app.core.routing.balancing import EXPLORE, order_routes
from app.core.routing.hedging import (
    AUTO_CEILING_SECONDS,
    AUTO_FLOOR_SECONDS,
    HedgeBudget,
    hedge_delay,
)
from app.core.routing.latency import RouteLatency
from app.core.routing.timeouts import call_timeout, estimated_tokens
from app.providers.nanogpt import NanoGPTConfig
from app.runtime.build import read_registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_route(index: int, weight: float = 1.0) -> Route:
    base = NanoGPTConfig(type="nanogpt", base_url="http://127.0.0.1:1/v1", api_key="k")
    config = RouteConfig(provider=f"p{index}", model=f"m{index}", weight=weight)
    return Route("model", index, f"p{index}", config, base)


# --- call timeouts ---------------------------------------------------------------------------


def test_tokens_are_estimated_from_length_and_token_ids_count_exactly():
    assert estimated_tokens(["abcd", "abcde"]) == 1 + 2
    assert estimated_tokens([[1, 2, 3], [4]]) == 4


def test_a_call_timeout_grows_with_work_and_keeps_a_fair_share_for_later_routes():
    policy = RoutePolicy(timeout_seconds=5, timeout_per_1k_tokens_seconds=0.05)
    assert call_timeout(policy, 10, remaining=60, routes_after=1) == pytest.approx(5.0005)
    assert call_timeout(policy, 300_000, remaining=60, routes_after=1) == pytest.approx(20)
    assert call_timeout(policy, 300_000, remaining=30, routes_after=1) == pytest.approx(15)
    assert call_timeout(policy, 300_000, remaining=30, routes_after=2) == pytest.approx(10)
    assert call_timeout(policy, 300_000, remaining=12, routes_after=0) == pytest.approx(12)
    assert call_timeout(policy, 10, remaining=-1, routes_after=0) > 0


# --- hedging ---------------------------------------------------------------------------------


def test_hedge_delay_is_off_fixed_or_the_routes_p95_within_bounds():
    latency = RouteLatency()
    assert hedge_delay(RoutePolicy(), latency) is None  # off by default
    assert hedge_delay(RoutePolicy(hedge_after_ms=200), latency) == pytest.approx(0.2)
    assert hedge_delay(RoutePolicy(hedge_after_ms=200, hedge_max_ratio=0), latency) is None
    auto = RoutePolicy(hedge_after_ms="auto")
    assert hedge_delay(auto, latency) == AUTO_CEILING_SECONDS  # nothing measured yet
    for i in range(100):
        latency.observe(0.1 + i / 1000)  # 0.100 .. 0.199 s
    assert hedge_delay(auto, latency) == pytest.approx(0.194)
    fast = RouteLatency()
    for _ in range(50):
        fast.observe(0.001)
    assert hedge_delay(auto, fast) == AUTO_FLOOR_SECONDS
    slow = RouteLatency()
    for _ in range(50):
        slow.observe(9.0)
    assert hedge_delay(auto, slow) == AUTO_CEILING_SECONDS


def test_the_hedge_budget_allows_a_ratio_of_calls_over_a_sliding_window():
    clock = FakeClock()
    budget = HedgeBudget(0.1, clock)
    budget.record_call()
    assert budget.try_hedge()  # one hedge is always allowed, to rescue a lone slow call
    granted = 1
    for _ in range(99):
        clock.now += 0.1
        budget.record_call()
        granted += budget.try_hedge()
    assert granted == 10  # 100 calls in the window, 10 % of them hedged
    clock.now += 61  # the window has moved past every one of them
    budget.record_call()
    assert budget.try_hedge()
    assert not budget.try_hedge()


def test_the_window_forgets_old_calls_bucket_by_bucket():
    clock = FakeClock()
    budget = HedgeBudget(0.5, clock)
    for _ in range(10):
        budget.record_call()
    clock.now += 30
    for _ in range(5):
        assert budget.try_hedge()
    assert not budget.try_hedge()
    clock.now += 35  # the 10 calls have left the window, the 5 hedges have not
    assert not budget.try_hedge()
    clock.now += 30  # now they have too: one hedge is allowed again
    assert budget.try_hedge()
    assert not budget.try_hedge()


# --- route order -----------------------------------------------------------------------------


def test_failover_keeps_registry_order():
    routes = [make_route(0), make_route(1), make_route(2)]
    order = order_routes(
        "failover", routes, cooling=lambda r: False, latency=lambda r: 1.0, rng=random.Random(1)
    )
    assert order == routes


def test_weighted_follows_the_weights_within_a_few_percent_and_fails_over_to_the_rest():
    routes = [make_route(0, weight=3), make_route(1, weight=1), make_route(2, weight=1)]
    rng = random.Random(42)
    firsts: Counter[int] = Counter()
    for _ in range(1000):
        order = order_routes(
            "weighted", routes, cooling=lambda r: False, latency=lambda r: None, rng=rng
        )
        assert sorted(r.index for r in order) == [0, 1, 2]  # the rest follow as failover
        firsts[order[0].index] += 1
    assert abs(firsts[0] / 1000 - 0.6) < 0.03
    assert abs(firsts[1] / 1000 - 0.2) < 0.03
    assert abs(firsts[2] / 1000 - 0.2) < 0.03


def test_a_cooling_route_goes_last_under_every_strategy():
    routes = [make_route(0, weight=100), make_route(1)]
    for strategy in ("weighted", "least-latency"):
        for seed in range(20):
            order = order_routes(
                strategy,
                routes,
                cooling=lambda r: r.index == 0,
                latency=lambda r: 0.001 if r.index == 0 else 1.0,
                rng=random.Random(seed),
            )
            assert [r.index for r in order] == [1, 0]


def test_least_latency_sends_nearly_everything_to_the_faster_route_after_warm_up():
    routes = [make_route(0), make_route(1)]
    stats = {0: RouteLatency(), 1: RouteLatency()}
    true_latency = {0: 0.200, 1: 0.020}
    rng = random.Random(7)
    served: list[int] = []
    for _ in range(1000):
        order = order_routes(
            "least-latency",
            routes,
            cooling=lambda r: False,
            latency=lambda r: stats[r.index].ewma,
            rng=rng,
        )
        first = order[0].index
        stats[first].observe(true_latency[first])
        served.append(first)
    assert served[:2] == [0, 1]  # each unmeasured route is tried once first
    after_warm_up = served[10:]
    share = after_warm_up.count(1) / len(after_warm_up)
    assert share >= 0.9
    assert share <= 1 - EXPLORE / 2  # the slow route is still probed now and then


def test_least_latency_notices_a_route_that_recovered():
    routes = [make_route(0), make_route(1)]
    stats = {0: RouteLatency(), 1: RouteLatency()}
    stats[0].observe(2.0)  # route 0 was slow
    stats[1].observe(0.1)
    rng = random.Random(3)
    for _ in range(400):
        order = order_routes(
            "least-latency",
            routes,
            cooling=lambda r: False,
            latency=lambda r: stats[r.index].ewma,
            rng=rng,
        )
        first = order[0].index
        stats[first].observe(0.01 if first == 0 else 0.1)  # route 0 is now the faster
    assert stats[0].ewma is not None and stats[0].ewma < 0.1
    order = order_routes(
        "least-latency",
        routes,
        cooling=lambda r: False,
        latency=lambda r: stats[r.index].ewma,
        rng=random.Random(0),
    )
    assert order[0].index == 0


# --- registry fields -------------------------------------------------------------------------


def registry_text(route_extra: str = "", model_extra: str = "") -> str:
    return f"""
providers:
  p: {{type: nanogpt, base_url: "http://127.0.0.1:1/v1", api_key: k, hedge_after_ms: 150}}
models:
  m:
    name: M
    owned_by: tests
    dimensions: 4
    max_tokens: 10
    pricing: {{per_million_tokens: 0.1}}
    {model_extra}
    routes:
      - {{provider: p, model: a{route_extra}}}
      - {{provider: p, model: b, hedge_after_ms: auto, weight: 2}}
      - {{provider: p, model: c, hedge_after_ms: 0}}
"""


def test_resilience_fields_are_read_and_overridden_per_route(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(registry_text(model_extra="strategy: weighted"))
    model = read_registry(path, {}).models["m"]
    assert model.config.strategy == "weighted"
    assert [r.policy.hedge_after_ms for r in model.routes] == [150.0, "auto", 0.0]
    assert [r.weight for r in model.routes] == [1.0, 2.0, 1.0]
    assert model.routes[0].policy.hedge_max_ratio == 0.1
    assert model.routes[0].policy.timeout_seconds == 5.0


@pytest.mark.parametrize(
    ("route_extra", "model_extra", "message"),
    [
        (", hedge_after_ms: soon", "", "models.m.routes.0.hedge_after_ms: must be milliseconds"),
        (", hedge_after_ms: -5", "", "models.m.routes.0.hedge_after_ms: must be milliseconds"),
        (", hedge_max_ratio: 2", "", "models.m.routes.0.hedge_max_ratio"),
        (", weight: 0", "", "models.m.routes.0.weight"),
        ("", "strategy: fastest", "models.m.strategy"),
    ],
)
def test_bad_resilience_fields_name_the_field(tmp_path, route_extra, model_extra, message):
    path = tmp_path / "models.yaml"
    path.write_text(registry_text(route_extra, model_extra))
    with pytest.raises(RegistryError) as caught:
        read_registry(path, {})
    assert message in str(caught.value)
