"""Usage and spend per client key, per model, per UTC day.

Each successful embeddings request adds its figures in process (no I/O on the request path);
a flush about once a second, and at shutdown, adds them to one Redis hash per (day, key),
fields `{model}<TAB>{figure}`, in one script call; hashes expire after `RETENTION_DAYS`. Keys
are identified by their short hash (`key_...`), never the key. Without Redis the figures stay
in this process. Reports add what is not flushed yet, so a caller sees its latest requests.

In a Redis Cluster a flush is one script call per hash slot, each its own batch with its own ID
(whose key carries a hash tag putting it in its hashes' slot), so each applies exactly once.

A flush applies exactly once. Each batch has an ID, and the script applies a batch only if its
ID is new, so a batch whose answer was lost (a timeout, a dropped connection) can be sent again
without counting twice. Within a batch every increment is its own `pcall`: one that Redis
refuses (a counter that would pass int64) is dropped with a warning, never retried, and never
stops the others. Figures are clamped to sane ranges before they are sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from app import metrics
from app.state.redis_client import REDIS_FAILURES, RedisClient, by_slot, hash_tag, is_cluster

log = logging.getLogger("app.usage")

RETENTION_DAYS = 400
ANONYMOUS = "anonymous"
FIGURES = ("requests", "input_tokens", "upstream_tokens", "cached_tokens", "cost_usd")
# No real figure comes near this (2^53: exact as a double too); anything past it is a bug.
MAX_INCREMENT = 2**53
# How long a batch ID is remembered: a resend comes within seconds, this allows hours.
BATCH_ID_TTL_SECONDS = 6 * 3600

# KEYS[1]: the batch's ID key; KEYS[2..]: the hashes. ARGV[1]: retention (s), ARGV[2]: the ID
# TTL, then per increment: hash number (1-based, into KEYS[2..]), field, kind (i/f), amount.
# Returns -1 if the batch was applied before, else the positions of refused increments.
APPLY_BATCH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return -1
end
local refused = {}
local n = 0
for i = 3, #ARGV, 4 do
  n = n + 1
  local key = KEYS[1 + tonumber(ARGV[i])]
  local command = ARGV[i + 2] == 'f' and 'HINCRBYFLOAT' or 'HINCRBY'
  local answer = redis.pcall(command, key, ARGV[i + 1], ARGV[i + 3])
  if type(answer) == 'table' and answer.err then
    refused[#refused + 1] = n
  end
end
for k = 2, #KEYS do
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return refused
"""

Batch = dict[tuple[str, str, str], dict[str, float]]


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
    def __init__(self, redis: RedisClient | None, *, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        # (day, key_id, model) -> figures not handed to a flush yet.
        self._local = _figures_by_slot()
        # Batches sent whose outcome is unknown (Redis failed or timed out): resent as they are,
        # under the same ID, until Redis answers; the script applies each one once.
        self._unsent: list[tuple[str, Batch]] = []
        self._script = redis.register_script(APPLY_BATCH) if redis is not None else None

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
        """Move the figures kept in process to Redis, exactly once; on failure, retry later."""
        if self._redis is None:
            return
        if self._local:
            # A Cluster runs a script on one slot's keys: one batch (and ID) per slot.
            groups = by_slot(self._redis, self._local.items(), lambda kv: self._hash_name(kv[0]))
            self._unsent += [(uuid.uuid4().hex, dict(group)) for group in groups]
            self._local = _figures_by_slot()
        while self._unsent:
            batch_id, batch = self._unsent[0]
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    await self._apply(batch_id, batch)
            except REDIS_FAILURES as exc:
                metrics.REDIS_ERRORS.labels("usage").inc()
                log.warning(
                    "usage not written to Redis yet (%s); kept in process", type(exc).__name__
                )
                return
            self._unsent.pop(0)

    async def _apply(self, batch_id: str, batch: Batch) -> None:
        assert self._script is not None
        names: dict[str, int] = {}
        args: list[str | int] = [RETENTION_DAYS * 86_400, BATCH_ID_TTL_SECONDS]
        described: list[str] = []
        for (day, key, model), figures in batch.items():
            name = self._hash_name((day, key, model))
            number = names.setdefault(name, len(names) + 1)
            for figure, value in figures.items():
                amount = _sane(figure, value, name)
                if amount is None:
                    continue
                kind = "f" if figure == "cost_usd" else "i"
                args += [number, f"{model}\t{figure}", kind, amount]
                described.append(f"{name} {model} {figure}")
        if not described:
            return
        batch_key = f"{self._prefix}batch:{batch_id}"
        if is_cluster(self._redis):  # the ID's key in the same slot as the batch's hashes
            batch_key += "{" + hash_tag(next(iter(names))) + "}"
        keys = [batch_key, *names]
        refused = await self._script(keys=keys, args=args)
        if refused == -1:
            log.info("usage batch %s was already applied; not counted again", batch_id)
            return
        for position in refused:
            log.warning("usage increment refused by Redis, dropped: %s", described[position - 1])

    def _hash_name(self, slot: tuple[str, str, str]) -> str:
        day, key, _ = slot
        return f"{self._prefix}{day}:{key}"

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
            except REDIS_FAILURES as exc:
                metrics.REDIS_ERRORS.labels("usage").inc()
                log.warning("usage not read from Redis (%s)", type(exc).__name__)
        wanted = set(days)
        for batch in [*(b for _, b in self._unsent), self._local]:
            for (day, key, model), figures in batch.items():
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


def _sane(figure: str, value: float, name: str) -> int | str | None:
    """The amount to send, clamped to [0, MAX_INCREMENT]; None when there is nothing to add."""
    if figure == "cost_usd":
        if not math.isfinite(value) or value <= 0:
            return None
        if value > MAX_INCREMENT:
            log.warning("usage cost %r for %s clamped to %d", value, name, MAX_INCREMENT)
            value = MAX_INCREMENT
        return repr(float(value))
    if not math.isfinite(value):
        return None
    amount = int(value)
    if amount <= 0:
        return None
    if amount > MAX_INCREMENT:
        log.warning("usage %s %d for %s clamped to %d", figure, amount, name, MAX_INCREMENT)
        amount = MAX_INCREMENT
    return amount


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
