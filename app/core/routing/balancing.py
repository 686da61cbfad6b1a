"""The order in which a request tries a model's routes, under the model's `strategy`.

- `failover`: registry order.
- `weighted`: routes drawn at random in proportion to their `weight` (without replacement, so
  the rest follow as failover), among routes not cooling down; cooling routes go last.
- `least-latency`: the lowest recent latency (EWMA) first; a route never measured yet is
  tried first so it gets measured; a share EXPLORE of requests puts a random other route first,
  so a route that recovered is noticed.

Cooldown applies under every strategy: the router still skips a cooling route it reaches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from app.config.registry import Route

EXPLORE = 0.05


def order_routes(
    strategy: str,
    routes: Sequence[Route],
    *,
    cooling: Callable[[Route], bool],
    latency: Callable[[Route], float | None],
    rng: random.Random,
) -> list[Route]:
    if strategy == "failover" or len(routes) < 2:
        return list(routes)
    ready = [route for route in routes if not cooling(route)]
    resting = [route for route in routes if cooling(route)]
    if strategy == "weighted":
        return _weighted(ready, rng) + resting
    return _least_latency(ready, latency, rng) + resting


def _weighted(routes: list[Route], rng: random.Random) -> list[Route]:
    left = list(routes)
    ordered: list[Route] = []
    while left:
        pick = rng.choices(range(len(left)), weights=[r.weight for r in left])[0]
        ordered.append(left.pop(pick))
    return ordered


def _least_latency(
    routes: list[Route], latency: Callable[[Route], float | None], rng: random.Random
) -> list[Route]:
    ordered = sorted(routes, key=lambda r: (latency(r) is not None, latency(r) or 0.0))
    if len(ordered) > 1 and rng.random() < EXPLORE:
        explored = ordered.pop(rng.randrange(1, len(ordered)))
        ordered.insert(0, explored)
    return ordered
