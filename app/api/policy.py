"""The caller's policy on one embeddings request, after validation, before the upstream call:
per-key request and token limits and the budget, in one check. Static keys and the internal
token have the default policy, which costs nothing here."""

from __future__ import annotations

import asyncio
import math

from starlette.types import Scope

from app import metrics
from app.api.admission import duration
from app.api.errors import NO_RETRY, RATE_LIMIT, GatewayError
from app.api.middleware import extra_headers
from app.auth.callers import Caller, CallerKind
from app.core.embedder import Embedded
from app.core.job import EmbeddingJob
from app.keys.checks import KeyChecks, KeyVerdict
from app.keys.model import ApiKeyRecord
from app.keys.service import Charge
from app.runtime.services import Services


class PolicyCheck:
    """The caller's policy on one request: started before the cache lookup so that its Redis
    round trip and the lookup's go at once (`Embedder.embed(admitted=...)`)."""

    def __init__(self, scope: Scope, services: Services, caller: Caller, job: EmbeddingJob):
        """Start the check, if the caller's policy needs one."""
        self.charge: Charge | None = None  # what was reserved, once `check` has passed
        self.check: asyncio.Task[Charge] | None = None  # None: nothing to ask the store
        record = caller.policy
        if caller.kind is not CallerKind.MANAGED or services.keys is None:
            return
        assert isinstance(record, ApiKeyRecord)
        self.charge = Charge(record.id, 0.0)  # a key's spend is recorded even without a budget
        checks = services.key_checks
        if checks is not None and (record.limited or record.budget_usd is not None):
            self.check = asyncio.ensure_future(_apply(scope, checks, record, job))

    async def outcome(self) -> Charge | None:
        """What was reserved, whatever became of the request (nothing if the check refused)."""
        if self.check is not None:
            try:
                self.charge = await self.check
            except (Exception, asyncio.CancelledError):  # refused, store down, or shut down
                self.charge = None
            self.check = None
        return self.charge


async def _apply(
    scope: Scope, checks: KeyChecks, record: ApiKeyRecord, job: EmbeddingJob
) -> Charge:
    """Raise a 429 when a per-key limit or the budget says no; else what was reserved."""
    budgeted = record.budget_usd is not None
    price = job.model.config.pricing.per_million_tokens
    tokens = job.prompt_tokens() if record.tokens_per_minute is not None or budgeted else 0
    estimate = tokens * price / 1_000_000 if budgeted else 0.0
    # One round trip for all of it (limits and budget), counted only if all of it admits.
    verdict = await checks.check(record, tokens, estimate)
    _report(scope, verdict, tokens)
    return Charge(record.id, estimate)


async def settle(services: Services, charge: Charge | None, job: EmbeddingJob, result: Embedded):
    """Charge what was really sent upstream: cached items cost nothing."""
    if charge is None or services.keys is None:
        return
    price = job.model.config.pricing.per_million_tokens
    await services.keys.settle(charge, result.upstream_tokens * price / 1_000_000)


async def refund(services: Services, charge: Charge | None) -> None:
    if charge is not None and services.keys is not None:
        await services.keys.settle(charge, 0.0)


def _report(scope: Scope, verdict: KeyVerdict, tokens: int) -> None:
    """The key's own limits replace the per-IP figures: they are the ones this client can use."""
    headers = extra_headers(scope)
    if (requests := verdict.requests) is not None:
        headers.update(
            {
                "x-ratelimit-limit-requests": str(requests.limit),
                "x-ratelimit-remaining-requests": str(requests.remaining),
                "x-ratelimit-reset-requests": duration(requests.reset),
            }
        )
        if verdict.refused == "requests":
            raise _limited(
                f"{requests.limit} requests per second for this key", requests.retry_after
            )
    if (verdict_tokens := verdict.tokens) is not None:
        headers.update(
            {
                "x-ratelimit-limit-tokens": str(verdict_tokens.limit),
                "x-ratelimit-remaining-tokens": str(verdict_tokens.remaining),
                "x-ratelimit-reset-tokens": duration(verdict_tokens.reset),
            }
        )
        if verdict.refused != "tokens":
            return
        if verdict_tokens.retry_after is None:
            error = _limited(
                f"{verdict_tokens.limit} tokens per minute for this key, and this request alone "
                f"has {tokens}",
                None,
            )
            error.headers.update(NO_RETRY)
            raise error
        raise _limited(
            f"{verdict_tokens.limit} tokens per minute for this key", verdict_tokens.retry_after
        )


def _limited(what: str, retry_after: float | None) -> GatewayError:
    metrics.RATE_LIMITED.inc()
    message = f"Rate limit reached: {what}."
    headers: dict[str, str] = {}
    if retry_after is not None:
        wait_ms = max(1, math.ceil(round(retry_after * 1000, 3)))
        message += f" Please try again in {duration(wait_ms / 1000)}."
        headers = {"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)}
    return GatewayError(429, message, type=RATE_LIMIT, code="rate_limit_exceeded", headers=headers)
