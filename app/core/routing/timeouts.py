"""How long one upstream call may take: its own budget, grown with its work, and a fair share
of what is left of the request's deadline.

A call's own budget is `timeout_seconds + timeout_per_1k_tokens_seconds * tokens / 1000`, so
a 2048-input batch gets seconds more than a single short input. Tokens are estimated from
length (four characters a token; token-ID input counts exactly): tokenising on the hot path
only to choose a timeout would cost more than it is worth.

The fair share: with `n` routes still able to serve after this one, a call may use at most
`remaining / (n + 1)` of the deadline, so a route that hangs can never eat the time the routes
after it need. The last route may use everything that is left.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.config.registry import RoutePolicy

CHARS_PER_TOKEN = 4
MOST_TOKENS_PER_REQUEST = 300_000  # OpenAI's cap, which validation enforces
_FLOOR = 0.001  # aiohttp refuses a zero timeout; the deadline is enforced above anyway


def estimated_tokens(inputs: Sequence[str] | Sequence[list[int]]) -> int:
    total = 0
    for item in inputs:
        total += len(item) if isinstance(item, list) else -(-len(item) // CHARS_PER_TOKEN)
    return total


def own_budget(policy: RoutePolicy, tokens: int) -> float:
    return policy.timeout_seconds + policy.timeout_per_1k_tokens_seconds * tokens / 1000


def call_timeout(policy: RoutePolicy, tokens: int, remaining: float, routes_after: int) -> float:
    fair_share = remaining / (routes_after + 1)
    return max(_FLOOR, min(own_budget(policy, tokens), fair_share))
