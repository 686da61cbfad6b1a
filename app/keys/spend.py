"""What managed keys really spent, written to the key store in batches, exactly once.

A request settles (or releases) its reservation here, in process; the background writer
(`app.state.batched_writes`) moves it to the store at once, and again and again with backoff
while the store is down, under the same batch ID, so nothing is charged twice or lost for an
outage: the spend of every key, budgeted or not, is kept until the store takes it. While it
waits, what is owed adds up per key and UTC day (bounded by keys and days); the reservations to
release wait beside it, up to `MAX_RELEASES` (past it they are left to expire at their
deadline). A reservation whose budget check timed out is released this way too: if the check
did reach the store after all, its reservation is dropped, never charged (no phantom spend).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, date, datetime

from app.keys.model import utcnow
from app.keys.store import KeyStore, KeyStoreError, SpendEntry
from app.state.batched_writes import BatchedWrites, StoreFailed

log = logging.getLogger("app.keys")

MAX_RELEASES = 100_000


class SpendLedger(BatchedWrites[list[SpendEntry]]):
    name = "spend"

    def __init__(self, store: KeyStore, *, interval: float = 1.0) -> None:
        super().__init__(interval=interval)
        self._store = store
        self._owed: defaultdict[tuple[str, date], float] = defaultdict(float)
        self._released: list[SpendEntry] = []
        self._dropped_releases = 0

    def charge(self, key_id: str, amount: float, member: str | None) -> None:
        """Charge `amount` to the key's spend now, and release its reservation `member`."""
        now = utcnow()
        if member is not None and len(self._released) < MAX_RELEASES:
            self._released.append(SpendEntry(key_id, amount, member, now))
            return
        if member is not None:
            self._dropped_releases += 1
            if self._dropped_releases == 1:
                log.warning("too many reservations waiting to be released; they will expire")
        if amount:
            self._owed[(key_id, now.date())] += amount

    def _take(self) -> list[list[SpendEntry]]:
        # What is owed is charged to the day it was spent on, however late it is written.
        entries = self._released + [
            SpendEntry(key_id, amount, None, datetime(d.year, d.month, d.day, 12, tzinfo=UTC))
            for (key_id, d), amount in self._owed.items()
        ]
        self._released, self._owed, self._dropped_releases = [], defaultdict(float), 0
        return self._store.split_spend(entries)

    async def _apply(self, batch_id: str, batch: list[SpendEntry]) -> None:
        try:
            await self._store.apply_spend(batch_id, batch)
        except KeyStoreError as exc:
            raise StoreFailed(str(exc)) from None
