"""The one interface both key stores implement, and what they share: spend buckets, the budget
rule, and how a change to a record is described."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from app.keys.model import ApiKeyRecord, BudgetPeriod


class KeyStoreError(Exception):
    """The store did not answer (Redis down, SQLite locked past its bound)."""


class ChangeConflict(KeyStoreError):
    """A record kept changing under a compare-and-set, try after try."""


def spend_buckets(now: datetime) -> dict[BudgetPeriod, str]:
    """The spend counters a charge at `now` adds to: its UTC day, its UTC month, and all time."""
    return {"day": f"day:{now:%Y-%m-%d}", "month": f"month:{now:%Y-%m}", "total": "total"}


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A record as a change leaves it, and the secret hashes it no longer has."""

    record: ApiKeyRecord
    dropped_hashes: list[str] = field(default_factory=list)


# Called with the stored record; returns the change, or raises (InvalidKeyChange) to refuse.
Transform = Callable[[ApiKeyRecord], KeyChange]

# What a budget check decided: admitted; refused, the budget is spent; or not now, because
# reservations in flight hold what is left (a retry after they settle may pass).
Reservation = Literal["admitted", "spent", "in_flight"]


@dataclass(frozen=True, slots=True)
class Reserved:
    outcome: Reservation
    spent_usd: float  # settled spend in the budget's period, before this request
    held_usd: float  # what other requests in flight reserved


@dataclass(frozen=True, slots=True)
class SpendEntry:
    """What a request really cost (`amount`, charged to the buckets of `at`), and the
    reservation it releases (`member`, None for none)."""

    key_id: str
    amount: float
    member: str | None
    at: datetime


def budget_rule(spent: float, held: float, amount: float, budget: float) -> Reservation:
    """The budget rule, as both stores' scripts apply it (keep them in step with this).

    A request is admitted when what is spent, what is held in flight and its own ceiling fit
    the budget; or, when nothing is in flight, whenever the budget is not spent yet: that
    request alone may overshoot, by at most its own cost. A spent budget is a final refusal;
    a budget held by requests in flight is a retryable one.
    """
    if spent >= budget:
        return "spent"
    if held > 0 and spent + held + amount > budget:
        return "in_flight"
    return "admitted"


class KeyStore(Protocol):
    """Records by id and by secret hash, each key's spend per day, month and in total, and the
    reservations of its requests in flight (each with a deadline, so a dead process's expire).

    `find` returns whatever record an index points at; whether the secret is still valid
    (rotation grace, revocation, expiry) is the caller's decision, made with its own clock.
    """

    async def start(self) -> None: ...

    async def create(self, record: ApiKeyRecord) -> None: ...

    async def get(self, key_id: str) -> ApiKeyRecord | None: ...

    async def find(self, digest: str) -> ApiKeyRecord | None: ...

    async def change(self, key_id: str, transform: Transform) -> ApiKeyRecord | None:
        """Apply `transform` to the stored record atomically (compare-and-set, or one
        transaction): a change made meanwhile by anyone is never overwritten. None: no such
        key."""
        ...

    async def all(self) -> list[ApiKeyRecord]: ...

    async def reserve(
        self,
        key_id: str,
        member: str,
        amount: float,
        period: BudgetPeriod,
        budget: float,
        hold_seconds: float,
    ) -> Reserved:
        """Atomically: drop expired reservations, apply `budget_rule`, and if admitted hold
        `amount` under `member` for `hold_seconds`."""
        ...

    def split_spend(self, entries: list[SpendEntry]) -> list[list[SpendEntry]]:
        """`entries` as the groups the store applies each in one step (one per Cluster slot)."""
        ...

    async def apply_spend(self, batch_id: str, entries: list[SpendEntry]) -> None:
        """Once per `batch_id`: charge each entry's amount and release its reservation."""
        ...

    async def spend(self, key_id: str, now: datetime) -> dict[BudgetPeriod, float]: ...

    async def aclose(self) -> None: ...
