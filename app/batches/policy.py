"""The creating key's policy on a batch's lines: its models, its limits, its budget, its usage.

The same policy as a synchronous request's (app/keys/policy.py: the limits and the budget's
reservation before the upstream call, the spend settled at what the upstream billed after it),
and the same usage ledger.

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
from app.errors import BudgetInFlight, ManagedKeyRefused
from app.keys.errors import KeyRateLimited
from app.keys.model import ApiKeyRecord, utcnow
from app.keys.policy import Charge, KeyPolicies
from app.keys.service import ManagedKeys, UnknownKey
from app.state.usage_ledger import UsageLedger

ANONYMOUS = "anonymous"
# A paced line looks again at least this often (a verdict's wait can be long; a cancel is not).
MAX_PACING_STEP = 1.0


class BatchPolicy:
    def __init__(
        self,
        keys: ManagedKeys | None,
        policies: KeyPolicies | None,
        usage: UsageLedger,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._keys = keys
        self._policies = policies
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
            raise ManagedKeyRefused("revoked", record.id)
        if record.disabled:
            raise ManagedKeyRefused("disabled", record.id)
        if record.expires_at is not None and utcnow() >= record.expires_at:
            raise ManagedKeyRefused("expired", record.id)
        return record

    @staticmethod
    def allows(record: ApiKeyRecord | None) -> Callable[[str], bool] | None:
        return record.allows if record is not None else None

    async def admit(self, record: ApiKeyRecord | None, job: EmbeddingJob) -> Charge | None:
        """Wait for the key's limits to admit the line, and reserve its budget; `BudgetSpent`
        once the budget is spent, `LineOverTokenLimit` for a line over the whole token limit."""
        if record is None or self._policies is None:
            return None
        while True:
            try:
                return (await self._policies.admit(record, job)).charge
            except KeyRateLimited as limited:
                if limited.retry_after is None:
                    assert limited.tokens is not None
                    raise LineOverTokenLimit(job.prompt_tokens(), limited.tokens.limit) from None
                wait = limited.retry_after
            except BudgetInFlight as held:  # requests in flight hold the rest: wait for them
                wait = held.retry_after
            await self._sleep(min(max(wait, 0.001), MAX_PACING_STEP))

    async def settle(self, charge: Charge | None, job: EmbeddingJob, result: Embedded) -> None:
        """Charge what was really sent upstream (cache hits cost nothing)."""
        if charge is None or self._policies is None:
            return
        price = job.model.config.pricing.per_million_tokens
        await self._policies.settle(charge, result.upstream_tokens, price)

    async def refund(self, charge: Charge | None) -> None:
        if charge is not None and self._policies is not None:
            await self._policies.release(charge)

    def record_usage(self, owner: str, job: EmbeddingJob, result: Embedded) -> None:
        self.record_line_usage(
            owner, job, result.prompt_tokens, result.cached_tokens, result.upstream_tokens
        )

    def record_line_usage(
        self,
        owner: str,
        job: EmbeddingJob,
        prompt: int,
        cached: int,
        upstream: int,
        lines: int = 1,
    ) -> None:
        """Lines in the key's usage, each as one request: one line, or a group's `lines` at
        once with their sums (the ledger adds them up either way)."""
        self._usage.record(
            None if owner == ANONYMOUS else owner,
            job.model.id,
            input_tokens=prompt,
            upstream_tokens=upstream,
            cached_tokens=cached,
            price_per_million=job.model.config.pricing.per_million_tokens,
            requests=lines,
        )
