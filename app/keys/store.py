"""The one interface both key stores implement, and the spend buckets they share."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from app.keys.model import ApiKeyRecord, BudgetPeriod


class KeyStoreError(Exception):
    """The store did not answer (Redis down, SQLite locked past its busy timeout)."""


def spend_buckets(now: datetime) -> dict[BudgetPeriod, str]:
    """The spend counters a charge at `now` adds to: its UTC day, its UTC month, and all time."""
    return {"day": f"day:{now:%Y-%m-%d}", "month": f"month:{now:%Y-%m}", "total": "total"}


class KeyStore(Protocol):
    """Records by id and by secret hash, plus each key's spend per day, month and in total.

    `find` returns whatever record an index points at; whether the secret is still valid
    (rotation grace, revocation, expiry) is the caller's decision, made with its own clock.
    """

    async def start(self) -> None: ...

    async def create(self, record: ApiKeyRecord) -> None: ...

    async def get(self, key_id: str) -> ApiKeyRecord | None: ...

    async def find(self, digest: str) -> ApiKeyRecord | None: ...

    async def save(self, record: ApiKeyRecord, dropped_hashes: list[str]) -> None:
        """Overwrite a record, index its hashes, and forget the hashes it no longer has."""
        ...

    async def all(self) -> list[ApiKeyRecord]: ...

    async def reserve(
        self, key_id: str, amount: float, period: BudgetPeriod, budget: float | None, now: datetime
    ) -> tuple[bool, float]:
        """Atomically: if the period's spend is under `budget` (or there is none), add `amount`
        to every bucket. Returns (admitted, the period's spend before this call)."""
        ...

    async def add_spend(self, key_id: str, amount: float, now: datetime) -> None:
        """Add `amount` (negative to refund) to every bucket of `now`."""
        ...

    async def spend(self, key_id: str, now: datetime) -> dict[BudgetPeriod, float]: ...

    async def aclose(self) -> None: ...
