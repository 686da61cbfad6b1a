"""The caller's policy on one embeddings request, after validation, before the upstream call:
per-key request and token limits, then the budget. Static keys and the internal token have
the default policy, which costs nothing here."""

from __future__ import annotations

import math

from starlette.types import Scope

from app import metrics
from app.api.admission import duration
from app.api.errors import NO_RETRY
from app.api.middleware import extra_headers
from app.auth import Caller, CallerKind
from app.embedder import Embedded
from app.errors import RATE_LIMIT, GatewayError
from app.gateway import Services
from app.jobs import EmbeddingJob
from app.keys.model import ApiKeyRecord
from app.keys.service import Charge


async def apply_policy(
    scope: Scope, gateway: Services, caller: Caller, job: EmbeddingJob
) -> Charge | None:
    """Raise a 429 when a per-key limit or the budget says no; else what was reserved."""
    record = caller.policy
    if caller.kind is not CallerKind.MANAGED or gateway.keys is None:
        return None
    assert isinstance(record, ApiKeyRecord)
    if record.limited and gateway.key_limits is not None:
        await _check_limits(scope, gateway, record, job)
    price = job.model.config.pricing.per_million_tokens
    estimate = job.prompt_tokens() * price / 1_000_000 if record.budget_usd is not None else 0.0
    return await gateway.keys.reserve(record, estimate)


async def settle(gateway: Services, charge: Charge | None, job: EmbeddingJob, result: Embedded):
    """Charge what was really sent upstream: cached items cost nothing."""
    if charge is None or gateway.keys is None:
        return
    price = job.model.config.pricing.per_million_tokens
    await gateway.keys.settle(charge, result.upstream_tokens * price / 1_000_000)


async def refund(gateway: Services, charge: Charge | None) -> None:
    if charge is not None and gateway.keys is not None:
        await gateway.keys.settle(charge, 0.0)


async def _check_limits(
    scope: Scope, gateway: Services, record: ApiKeyRecord, job: EmbeddingJob
) -> None:
    limits = gateway.key_limits
    assert limits is not None
    headers = extra_headers(scope)
    if record.rate_limit_per_second is not None:
        decision = await limits.check_requests(record.id, record.rate_limit_per_second)
        # The key's own limit replaces the per-IP figures: it is the one this client can use.
        headers.update(
            {
                "x-ratelimit-limit-requests": str(decision.limit),
                "x-ratelimit-remaining-requests": str(decision.remaining),
                "x-ratelimit-reset-requests": duration(decision.reset),
            }
        )
        if not decision.allowed:
            raise _limited(
                f"{decision.limit} requests per second for this key", decision.retry_after
            )
    if record.tokens_per_minute is not None:
        tokens = job.prompt_tokens()
        verdict = await limits.check_tokens(record.id, record.tokens_per_minute, tokens)
        headers.update(
            {
                "x-ratelimit-limit-tokens": str(verdict.limit),
                "x-ratelimit-remaining-tokens": str(verdict.remaining),
                "x-ratelimit-reset-tokens": duration(verdict.reset),
            }
        )
        if verdict.allowed:
            return
        if verdict.retry_after is None:
            error = _limited(
                f"{verdict.limit} tokens per minute for this key, and this request alone has "
                f"{tokens}",
                None,
            )
            error.headers.update(NO_RETRY)
            raise error
        raise _limited(f"{verdict.limit} tokens per minute for this key", verdict.retry_after)


def _limited(what: str, retry_after: float | None) -> GatewayError:
    metrics.RATE_LIMITED.inc()
    message = f"Rate limit reached: {what}."
    headers: dict[str, str] = {}
    if retry_after is not None:
        wait_ms = max(1, math.ceil(round(retry_after * 1000, 3)))
        message += f" Please try again in {duration(wait_ms / 1000)}."
        headers = {"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)}
    return GatewayError(429, message, type=RATE_LIMIT, code="rate_limit_exceeded", headers=headers)
