"""A managed key's policy on one request, below HTTP: its limits and budget before the upstream
call (`admit`), and what the request really cost after it (`settle`, or `release` when it
failed). The embeddings endpoint uses it, and so can anything that embeds for a key without an
HTTP request (the Batch API). Refusals are domain errors: `KeyRateLimited`, `BudgetSpent` (a
final refusal), `BudgetInFlight` (retry shortly), `KeyStoreUnavailable` (a budget is never
spent unchecked).

**Budgets hold both ways.** A request reserves its *ceiling*: the most its upstream count can
be believed to be (`app.core.token_accounting`: 4 times the gateway's own cl100k count plus 8 per
input, and never past `max_tokens` per input) at the model's price. It settles at what the
upstream really billed, capped at that ceiling, and the rest of the reservation is released.
With the store's rule (`app.keys.store.budget_rule`) a key overshoots its budget by at most one
request's real cost whatever the upstream's tokenizer, and it is told `insufficient_quota` only
once its settled spend has reached the budget; before that, a request that does not fit beside
the reservations in flight gets a retryable 429. A reservation carries a deadline
(`hold_seconds`): one whose process died frees itself.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass

from app import metrics
from app.core.job import EmbeddingJob
from app.core.token_accounting import FACTOR, SLACK_PER_INPUT
from app.errors import BudgetInFlight, KeyStoreUnavailable
from app.keys.budget_lua import held_member
from app.keys.checks import BudgetAsk, KeyChecks, KeyVerdict
from app.keys.errors import KeyRateLimited
from app.keys.model import ApiKeyRecord
from app.keys.service import ManagedKeys
from app.keys.spend import SpendLedger

IN_FLIGHT_RETRY_SECONDS = 1.0  # requests in flight settle within about this long


@dataclass(frozen=True, slots=True)
class Charge:
    """What a request holds against its key until it settles."""

    key_id: str
    reserved_usd: float  # the ceiling held against the budget (0 without one)
    held: str | None  # the reservation to release when the request settles; None: none


@dataclass(frozen=True, slots=True)
class Admission:
    charge: Charge
    verdict: KeyVerdict | None  # the key's limits as counted, for the response's headers


def ceiling_tokens(own_tokens: int, inputs: int, max_tokens: int) -> int:
    """The most an upstream's count for these inputs can be believed to be: the bound
    `app.core.token_accounting.plausible_tokens` checks (keep the two in step)."""
    slack = SLACK_PER_INPUT * inputs
    return min(FACTOR * own_tokens + slack, max_tokens * inputs + slack)


class KeyPolicies:
    def __init__(
        self,
        keys: ManagedKeys,
        checks: KeyChecks,
        spend: SpendLedger,
        *,
        hold_seconds: float,
        settle_timeout: float,
    ) -> None:
        self.keys = keys
        self.spend = spend
        self._checks = checks
        self._hold_seconds = hold_seconds
        self._settle_timeout = settle_timeout
        self._members = itertools.count()
        self._member_prefix = uuid.uuid4().hex[:12]

    @staticmethod
    def needs_check(record: ApiKeyRecord) -> bool:
        """Whether `admit` asks the store anything (else the request is admitted as it is)."""
        return record.limited or record.budget_usd is not None

    @staticmethod
    def unchecked(record: ApiKeyRecord) -> Admission:
        """A key without limits or budget: nothing held, its spend still recorded."""
        return Admission(Charge(record.id, 0.0, None), None)

    async def admit(self, record: ApiKeyRecord, job: EmbeddingJob) -> Admission:
        """Check and count the key's limits and reserve its budget, or raise the refusal."""
        if not self.needs_check(record):
            return self.unchecked(record)
        budgeted = record.budget_usd is not None
        price = job.model.config.pricing.per_million_tokens
        tokens = job.prompt_tokens() if record.tokens_per_minute is not None or budgeted else 0
        ceiling = 0.0
        if budgeted:
            ceiling = ceiling_tokens(tokens, len(job), job.model.config.max_tokens) * price / 1e6
        member = f"{self._member_prefix}{next(self._members)}"
        try:
            verdict = await self._checks.check(
                record, tokens, BudgetAsk(member, ceiling, self._hold_seconds)
            )
        except (KeyStoreUnavailable, asyncio.CancelledError):
            if budgeted:  # the store may still apply it: release it, so it is never charged
                self.spend.charge(record.id, 0.0, held_member(member, ceiling))
            raise
        _refuse(record, verdict, tokens, self.keys)
        held = held_member(member, ceiling) if budgeted else None
        return Admission(Charge(record.id, ceiling, held), verdict)

    async def settle(self, charge: Charge, upstream_tokens: int, price_per_million: float) -> None:
        """Charge what was really sent upstream (cache hits are free), at most what was held,
        and release the reservation. A budgeted key's settle is written before this returns
        (within `settle_timeout`), so the key's next request sees it; the others' go with the
        writer's next batch."""
        actual = upstream_tokens * price_per_million / 1e6
        if charge.held is not None:
            actual = min(actual, charge.reserved_usd)
        self.spend.charge(charge.key_id, actual, charge.held)
        if charge.held is not None:
            await self._written()

    async def release(self, charge: Charge) -> None:
        """The request failed: nothing is charged, and its reservation is released."""
        if charge.held is not None:
            self.spend.charge(charge.key_id, 0.0, charge.held)
            await self._written()

    async def aclose(self) -> None:
        await self._checks.aclose()
        await self.spend.close()  # one last write of what is owed

    async def _written(self) -> None:
        try:
            async with asyncio.timeout(self._settle_timeout):
                await self.spend.flush()
        except Exception:  # kept in process: the writer sends it again, with backoff
            self.spend.wake()


def _refuse(record: ApiKeyRecord, verdict: KeyVerdict, tokens: int, keys: ManagedKeys) -> None:
    requests, counted = verdict.requests, verdict.tokens
    match verdict.refused:
        case None:
            return
        case "budget":
            raise keys.budget_spent(record, verdict.spent_usd)
        case "in_flight":
            assert record.budget_usd is not None
            raise BudgetInFlight(record.budget_usd, verdict.spent_usd, IN_FLIGHT_RETRY_SECONDS)
    metrics.RATE_LIMITED.inc()
    if verdict.refused == "requests":
        assert requests is not None
        raise KeyRateLimited(
            "requests",
            f"{requests.limit} requests per second for this key",
            requests.retry_after,
            requests=requests,
            tokens=counted,
        )
    assert counted is not None
    what = f"{counted.limit} tokens per minute for this key"
    if counted.retry_after is None:
        what += f", and this request alone has {tokens}"
    raise KeyRateLimited("tokens", what, counted.retry_after, requests=requests, tokens=counted)
