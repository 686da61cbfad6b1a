"""Usage and spend per client key, per model, per UTC day.

Each successful embeddings request adds its figures in process (no I/O on the request path);
a flush about once a second, and at shutdown, adds them to one Redis hash per (day, key),
fields `{model}<TAB>{figure}`, in one pipelined round trip; hashes expire after
`RETENTION_DAYS`. Keys are identified by their short hash (`key_...`), never the key. Without
Redis the figures stay in this process; while Redis fails they wait for the next successful
flush. Reports add what is not flushed yet, so a caller always sees its own latest requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import metrics

log = logging.getLogger("app.usage")

RETENTION_DAYS = 400
ANONYMOUS = "anonymous"
FIGURES = ("requests", "input_tokens", "upstream_tokens", "cached_tokens", "cost_usd")


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


def today() -> date:
    return datetime.now(UTC).date()


class UsageLedger:
    def __init__(self, redis: Redis | None, *, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        # (day, key_id, model) -> figures kept here when Redis is absent or failing.
        self._local = _figures_by_slot()

    def record(
        self,
        key_id: str | None,
        model: str,
        *,
        input_tokens: int,
        upstream_tokens: int,
        cached_tokens: int,
        price_per_million: float,
    ) -> None:
        pending = self._local[(today().isoformat(), key_id or ANONYMOUS, model)]
        pending["requests"] += 1
        pending["input_tokens"] += input_tokens
        pending["upstream_tokens"] += upstream_tokens
        pending["cached_tokens"] += cached_tokens
        cost = upstream_tokens * price_per_million / 1_000_000
        pending["cost_usd"] += cost
        if cost:
            metrics.SPEND_USD.labels(model).inc(cost)

    async def flush(self) -> None:
        """Move the figures kept in process to Redis; on failure they wait for the next flush."""
        if self._redis is None or not self._local:
            return
        batch, self._local = self._local, _figures_by_slot()
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for (day, key, model), figures in batch.items():
                        name = f"{self._prefix}{day}:{key}"
                        for figure, value in figures.items():
                            field = f"{model}\t{figure}"
                            if figure == "cost_usd":
                                pipe.hincrbyfloat(name, field, value)
                            else:
                                pipe.hincrby(name, field, int(value))
                        pipe.expire(name, RETENTION_DAYS * 86_400)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.REDIS_ERRORS.labels("usage").inc()
            log.warning("usage not written to Redis yet (%s); kept in process", type(exc).__name__)
            for slot, figures in batch.items():
                pending = self._local[slot]
                for figure, value in figures.items():
                    pending[figure] += value

    async def run_flusher(self, interval: float = 1.0) -> None:
        """Flush every `interval` seconds until cancelled (shutdown then flushes once more)."""
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def report(self, key_id: str | None, start: date, end: date) -> list[UsageRow]:
        """Rows for one key (or every key, when `key_id` is None), oldest day first."""
        await self.flush()
        rows: dict[tuple[str, str, str], UsageRow] = {}
        days = [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
        if self._redis is not None:
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    for day, key, fields in await self._read(days, key_id):
                        for field, raw in fields.items():
                            model, _, figure = field.decode().partition("\t")
                            if figure not in FIGURES:
                                continue
                            value = float(raw) if figure == "cost_usd" else int(raw)
                            row = rows.setdefault((day, key, model), UsageRow(day, key, model))
                            row.add({figure: value})
            except (RedisError, OSError, TimeoutError) as exc:
                metrics.REDIS_ERRORS.labels("usage").inc()
                log.warning("usage not read from Redis (%s)", type(exc).__name__)
        wanted = set(days)
        for (day, key, model), figures in self._local.items():
            if day in wanted and (key_id is None or key == key_id):
                rows.setdefault((day, key, model), UsageRow(day, key, model)).add(figures)
        return [rows[k] for k in sorted(rows)]

    async def _read(
        self, days: list[str], key_id: str | None
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        assert self._redis is not None
        names: list[tuple[str, str, str]] = []
        for day in days:
            if key_id is not None:
                names.append((day, key_id, f"{self._prefix}{day}:{key_id}"))
                continue
            async for raw in self._redis.scan_iter(match=f"{self._prefix}{day}:*", count=500):
                name = raw.decode()
                names.append((day, name.rsplit(":", 1)[1], name))
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, _, name in names:
                pipe.hgetall(name)
            results = await pipe.execute()
        return [(day, key, fields) for (day, key, _), fields in zip(names, results, strict=True)]


def _figures_by_slot() -> defaultdict[tuple[str, str, str], dict[str, float]]:
    """(day, key_id, model) -> figures, each starting at zero."""
    return defaultdict(lambda: dict.fromkeys(FIGURES, 0))


def totals(rows: list[UsageRow]) -> dict[str, float]:
    total = dict.fromkeys(FIGURES, 0)
    for row in rows:
        for figure in FIGURES:
            total[figure] += asdict(row)[figure]
    total["cost_usd"] = round(total["cost_usd"], 10)
    return total
