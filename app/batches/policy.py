"""The creating key's policy on a batch's lines: its models, its limits, its budget, its usage.

An adapter over today's interfaces — `ManagedKeys.get` and `.settle`, `KeyChecks.check`,
`UsageLedger.record` — kept to this one module so that it can be rewired to app/keys/policy.py
(domain errors, budget reserve/settle, the usage ledger) when that lands.

What differs from a synchronous request: a line over the key's requests per second or tokens
per minute waits for its turn (a batch is paced by its key's limits, never refused by them),
unless it alone is over the tokens per minute (`LineOverTokenLimit`). A spent budget raises
`BudgetSpent`, so every line after it gets an `insufficient_quota` error line. Usage and spend
go to the key that created the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app.batches.errors import LineOverTokenLimit
from app.core.embedder import Embedded
from app.core.job import EmbeddingJob
from app.errors import ManagedKeyRefused
from app.keys.checks import KeyChecks
from app.keys.model import ApiKeyRecord, utcnow
from app.keys.service import Charge, ManagedKeys, UnknownKey
from app.state.usage_ledger import UsageLedger

ANONYMOUS = "anonymous"
# A paced line looks again at least this often (a verdict's wait can be long; a cancel is not).
MAX_PACING_STEP = 1.0


class BatchPolicy:
    def __init__(
        self,
        keys: ManagedKeys | None,
        checks: KeyChecks | None,
        usage: UsageLedger,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._keys = keys
        self._checks = checks
        self._usage = usage
        self._sleep = sleep

    async def record(self, owner: str) -> ApiKeyRecord | None:
        """The creating key's current record; None for a key with the default policy (a static
        key, the internal token, no auth). ManagedKeyRefused once it is revoked, disabled or
        expired: its remaining lines fail as its requests would."""
        if self._keys is None or owner == ANONYMOUS:
            return None
        try:
            record = await self._keys.get(owner)
        except UnknownKey:
            return None  # not a managed key
        if record.revoked_at is not None:
            raise ManagedKeyRefused("revoked")
        if record.disabled:
            raise ManagedKeyRefused("disabled")
        if record.expires_at is not None and utcnow() >= record.expires_at:
            raise ManagedKeyRefused("expired")
        return record

    @staticmethod
    def allows(record: ApiKeyRecord | None) -> Callable[[str], bool] | None:
        return record.allows if record is not None else None

    async def admit(self, record: ApiKeyRecord | None, job: EmbeddingJob) -> Charge | None:
        """Wait for the key's limits to admit the line, and reserve its estimated cost."""
        if record is None:
            return None
        checks = self._checks
        budgeted = record.budget_usd is not None
        if checks is None or not (record.limited or budgeted):
            return Charge(record.id, 0.0)  # a key's spend is recorded even without a budget
        price = job.model.config.pricing.per_million_tokens
        tokens = job.prompt_tokens() if record.tokens_per_minute is not None or budgeted else 0
        estimate = tokens * price / 1_000_000 if budgeted else 0.0
        while True:
            verdict = await checks.check(record, tokens, estimate)  # BudgetSpent when spent
            if verdict.refused is None:
                return Charge(record.id, estimate)
            wait = 0.05
            if verdict.refused == "requests" and verdict.requests is not None:
                wait = verdict.requests.retry_after
            elif verdict.refused == "tokens" and verdict.tokens is not None:
                if verdict.tokens.retry_after is None:
                    raise LineOverTokenLimit(tokens, verdict.tokens.limit)
                wait = verdict.tokens.retry_after
            await self._sleep(min(max(wait, 0.001), MAX_PACING_STEP))

    async def settle(self, charge: Charge | None, job: EmbeddingJob, result: Embedded) -> None:
        """Charge what was really sent upstream (cache hits cost nothing)."""
        if charge is None or self._keys is None:
            return
        price = job.model.config.pricing.per_million_tokens
        await self._keys.settle(charge, result.upstream_tokens * price / 1_000_000)

    async def refund(self, charge: Charge | None) -> None:
        if charge is not None and self._keys is not None:
            await self._keys.settle(charge, 0.0)

    def record_usage(self, owner: str, job: EmbeddingJob, result: Embedded) -> None:
        self.record_line_usage(
            owner, job, result.prompt_tokens, result.cached_tokens, result.upstream_tokens
        )

    def record_line_usage(
        self, owner: str, job: EmbeddingJob, prompt: int, cached: int, upstream: int
    ) -> None:
        """One line in the key's usage, as one request (a grouped line: its share)."""
        self._usage.record(
            None if owner == ANONYMOUS else owner,
            job.model.id,
            input_tokens=prompt,
            upstream_tokens=upstream,
            cached_tokens=cached,
            price_per_million=job.model.config.pricing.per_million_tokens,
        )
