"""Usage and spend per client key, per model, per UTC day.

Each successful embeddings request adds its figures in process (no I/O on the request path);
about once a second a background writer moves them to the shared books, exactly once
(`app.state.batched_writes`): Redis when REDIS_URL is set (`usage_redis`), else a SQLite file
beside KEYS_DB that every worker on the machine shares (`usage_sqlite`). Only if neither can
be had do the figures stay in this process. Keys are identified by their short hash
(`key_...`), never the key. So what a request was answered more than a couple of seconds
before a crash (SIGKILL, OOM) is in the books, for every worker and replica to report.

A report reads the books while holding the writer's lock (no batch is in flight meanwhile)
and adds what this process has not written yet, so a caller sees its latest requests and
nothing twice. A report the books cannot answer in time raises `UsageUnavailable` (a 503):
never a silently empty report.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from app import metrics
from app.errors import UsageUnavailable
from app.state.batched_writes import BatchedWrites, StoreFailed

log = logging.getLogger("app.usage")

ANONYMOUS = "anonymous"
FIGURES = ("requests", "input_tokens", "upstream_tokens", "cached_tokens", "cost_usd")
RETENTION_DAYS = 400
# No real figure comes near this (2^53: exact as a double too); anything past it is a bug.
MAX_INCREMENT = 2**53
# How long a batch ID is remembered: a resend comes within seconds, this allows hours.
BATCH_ID_TTL_SECONDS = 6 * 3600

Row = tuple[str, str, str]  # (day, key_id, model)
Batch = dict[Row, dict[str, float]]


@dataclass(slots=True)
class UsageRow:
    date: str
    key_id: str
    model: str
    requests: int = 0
    input_tokens: int = 0  # what the client sent
    upstream_tokens: int = 0  # what was sent (and billed) upstream
    cached_tokens: int = 0  # what the cache answered instead
    cost_usd: float = 0.0  # upstream_tokens at the registry's price

    def add(self, figures: dict[str, float]) -> None:
        for name, value in figures.items():
            setattr(self, name, getattr(self, name) + value)


class UsageBooks(Protocol):
    """Where usage is kept for every worker and replica: Redis or a SQLite file."""

    description: str

    def split(self, batch: Batch) -> list[Batch]:
        """`batch` as the parts the store applies each in one step (one per Cluster slot)."""
        ...

    async def apply(self, batch_id: str, batch: Batch) -> None:
        """Add `batch` once; StoreFailed when the outcome is unknown."""
        ...

    async def read(
        self, days: list[str], key_id: str | None, timeout: float
    ) -> list[tuple[Row, dict[str, float]]]:
        """Every stored row of `days` (of one key, or of all); StoreFailed if it cannot."""
        ...

    async def start(self) -> None:
        """Check the store can be used at all (OSError if not: a read-only disk, say)."""
        ...

    async def maintain(self) -> None:
        """Background upkeep, run by the writer (building an index, dropping old batch IDs)."""
        ...

    async def aclose(self) -> None: ...


def today() -> date:
    return datetime.now(UTC).date()


class UsageLedger(BatchedWrites[Batch]):
    name = "usage"

    def __init__(
        self, books: UsageBooks | None, *, report_timeout: float, interval: float = 1.0
    ) -> None:
        super().__init__(interval=interval)
        self.books = books
        self._report_timeout = report_timeout
        self._local = _new_batch()  # figures not cut into a batch yet

    @property
    def shared(self) -> bool:
        return self.books is not None

    def record(
        self,
        key_id: str | None,
        model: str,
        *,
        input_tokens: int,
        upstream_tokens: int,
        cached_tokens: int,
        price_per_million: float,
        requests: int = 1,  # the Batch API records a group of lines (each a request) at once
    ) -> None:
        pending = self._local[(today().isoformat(), key_id or ANONYMOUS, model)]
        pending["requests"] += requests
        pending["input_tokens"] += input_tokens
        pending["upstream_tokens"] += upstream_tokens
        pending["cached_tokens"] += cached_tokens
        cost = upstream_tokens * price_per_million / 1_000_000
        pending["cost_usd"] += cost
        if cost:
            metrics.SPEND_USD.labels(model).inc(cost)

    def _take(self) -> list[Batch]:
        if not self._local or self.books is None:
            return []
        batch, self._local = dict(self._local), _new_batch()
        return self.books.split(batch)

    async def _apply(self, batch_id: str, batch: Batch) -> None:
        assert self.books is not None
        await self.books.apply(batch_id, batch)

    async def start(self) -> None:
        """At start-up: books that cannot be used at all (a read-only disk) are said once, and
        usage stays in each process instead."""
        if self.books is None:
            return
        try:
            await self.books.start()
        except OSError as exc:
            log.warning(
                "usage is kept in each process only: %s cannot be used (%s)",
                self.books.description,
                exc,
            )
            self.books = None

    async def run(self) -> None:
        if self.books is not None:
            asyncio.get_running_loop().create_task(self._maintain())
        await super().run()

    async def _maintain(self) -> None:
        assert self.books is not None
        try:
            await self.books.maintain()
        except Exception as exc:  # upkeep only; the next start tries again
            metrics.BATCHED_WRITE_FAILURES.labels("usage-index").inc()
            self._last_error = f"upkeep: {exc!r}"

    async def report(self, key_id: str | None, start: date, end: date) -> list[UsageRow]:
        """Rows for one key (or every key, when `key_id` is None), oldest day first."""
        rows: dict[Row, UsageRow] = {}
        days = [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
        wanted = set(days)

        def add(row: Row, figures: dict[str, float]) -> None:
            day, key, model = row
            if day in wanted and (key_id is None or key == key_id):
                rows.setdefault(row, UsageRow(day, key, model)).add(figures)

        # Under the writer's lock: no batch is on its way, so each figure is either in the
        # books or pending here, never both and never neither.
        async with self._lock:
            if self.books is not None:
                try:
                    stored = await self.books.read(days, key_id, self._report_timeout)
                except StoreFailed as exc:
                    metrics.REDIS_ERRORS.labels("usage").inc()
                    raise UsageUnavailable(str(exc)) from None
                for row, figures in stored:
                    add(row, figures)
            for batch in [*(b for _, b in self._unsent), self._local]:
                for row, figures in batch.items():
                    add(row, figures)
        return [rows[k] for k in sorted(rows)]

    async def aclose(self) -> None:
        await self.close()
        if self.books is not None:
            await self.books.aclose()


def sane(figure: str, value: float) -> int | float | None:
    """The amount to store, clamped to [0, MAX_INCREMENT]; None when there is nothing to add."""
    if not math.isfinite(value) or value <= 0:
        return None
    if figure == "cost_usd":
        return float(min(value, MAX_INCREMENT))
    amount = int(value)
    return min(amount, MAX_INCREMENT) if amount > 0 else None


def _new_batch() -> defaultdict[Row, dict[str, float]]:
    """(day, key_id, model) -> figures, each starting at zero."""
    return defaultdict(lambda: dict.fromkeys(FIGURES, 0))


def totals(rows: list[UsageRow]) -> dict[str, float]:
    total: dict[str, float] = dict.fromkeys(FIGURES, 0)
    for row in rows:
        for figure in FIGURES:
            total[figure] += asdict(row)[figure]
    total["cost_usd"] = round(total["cost_usd"], 10)
    return total
