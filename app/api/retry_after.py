"""OpenAI-style 429s: say when to come back, in the message and in both retry headers."""

from __future__ import annotations

import math

from app.errors import RATE_LIMIT, GatewayError


def too_many_requests(message: str, retry_after: float, *, code: str) -> GatewayError:
    wait_ms = max(1, _ceil_ms(retry_after))
    return GatewayError(
        429,
        f"{message} Please try again in {duration(wait_ms / 1000)}.",
        type=RATE_LIMIT,
        code=code,
        headers={"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)},
    )


def duration(seconds: float) -> str:
    """OpenAI's style for reset times: `250ms` below a second, `1s` or `1.5s` above."""
    ms = max(0, _ceil_ms(seconds))
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:g}s"


def _ceil_ms(seconds: float) -> int:
    # Round to the microsecond first, so 0.25 s that arrived as 0.2500000001 is still 250 ms.
    return math.ceil(round(seconds * 1000, 3))
