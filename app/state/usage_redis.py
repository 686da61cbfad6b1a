"""Usage in Redis: one hash per (day, key), and one index set of each day's keys.

- `{prefix}{day}:{key_id}`: fields `{model}<TAB>{figure}` (the names usage has always had).
- `{prefix}index:{day}`: the set of key ids with usage that day, so a report over every key
  reads exactly the hashes it needs: no keyspace SCAN, however many other keys Redis holds
  (the embedding cache writes one per input). Both expire after `RETENTION_DAYS`.
- `{prefix}index:built`: set once the index covers the hashes written before it existed. On
  start a worker that finds it missing builds the index with one SCAN, in the background; a
  report over every key answers 503 until then rather than leave days out.

A batch is applied by one script call per hash slot (in a Cluster each is its own batch with
its own ID, whose key carries the hashes' hash tag), so each applies exactly once. The index
sets are written first, by SADD (idempotent, so a resend is harmless): a report never misses
a hash whose figures were applied. Within a batch every increment is its own `pcall`: one that
Redis refuses (a counter that would pass int64) is dropped with a warning, never retried, and
never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from app.state.batched_writes import StoreFailed
from app.state.redis_client import REDIS_FAILURES, RedisClient, by_slot, hash_tag, is_cluster
from app.state.usage_ledger import (
    BATCH_ID_TTL_SECONDS,
    FIGURES,
    RETENTION_DAYS,
    Batch,
    Row,
    sane,
)

log = logging.getLogger("app.usage")
T = TypeVar("T")

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
_DAY = re.compile(r"^(\d{4}-\d{2}-\d{2}):(.+)$")
SCAN_BATCH = 1000


class RedisUsageBooks:
    def __init__(self, redis: RedisClient, *, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = max(timeout, 1.0)  # one flush is a background call: it may take a while
        self._script = redis.register_script(APPLY_BATCH)
        self._building: asyncio.Task[None] | None = None
        self.description = "Redis"

    def hash_name(self, row: Row) -> str:
        day, key, _ = row
        return f"{self._prefix}{day}:{key}"

    def index_name(self, day: str) -> str:
        return f"{self._prefix}index:{day}"

    async def _bounded(self, call: Awaitable[T], timeout: float) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await call
        except REDIS_FAILURES as exc:
            raise StoreFailed(f"Redis: {type(exc).__name__}") from exc

    # -- writing ----------------------------------------------------------------------------

    def split(self, batch: Batch) -> list[Batch]:
        return [
            dict(g) for g in by_slot(self._redis, batch.items(), lambda kv: self.hash_name(kv[0]))
        ]

    async def apply(self, batch_id: str, batch: Batch) -> None:
        names: dict[str, int] = {}
        args: list[str | int | float] = [RETENTION_DAYS * 86_400, BATCH_ID_TTL_SECONDS]
        described: list[str] = []
        index: dict[str, set[str]] = {}
        for row, figures in batch.items():
            day, key, model = row
            name = self.hash_name(row)
            index.setdefault(day, set()).add(key)
            for figure in FIGURES:
                amount = sane(figure, figures.get(figure, 0))
                if amount is None:
                    continue
                number = names.setdefault(name, len(names) + 1)
                kind = "f" if figure == "cost_usd" else "i"
                args += [
                    number,
                    f"{model}\t{figure}",
                    kind,
                    repr(amount) if kind == "f" else amount,
                ]
                described.append(f"{name} {model} {figure}")
        if not described:
            return
        batch_key = f"{self._prefix}batch:{batch_id}"
        if is_cluster(self._redis):  # the ID's key in the same slot as the batch's hashes
            batch_key += "{" + hash_tag(next(iter(names))) + "}"
        await self._bounded(self._index(index), self._timeout)
        refused = await self._bounded(
            self._script(keys=[batch_key, *names], args=args), self._timeout
        )
        if refused == -1:
            log.info("usage batch %s was already applied; not counted again", batch_id)
            return
        for position in refused:
            log.warning("usage increment refused by Redis, dropped: %s", described[position - 1])

    async def _index(self, index: dict[str, set[str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for day, keys in index.items():
                pipe.sadd(self.index_name(day), *sorted(keys))
                pipe.expire(self.index_name(day), RETENTION_DAYS * 86_400)
            await pipe.execute()

    # -- reading ----------------------------------------------------------------------------

    async def read(
        self, days: list[str], key_id: str | None, timeout: float
    ) -> list[tuple[Row, dict[str, float]]]:
        return await self._bounded(self._read(days, key_id), timeout)

    async def _read(
        self, days: list[str], key_id: str | None
    ) -> list[tuple[Row, dict[str, float]]]:
        pairs: list[tuple[str, str]]
        if key_id is not None:
            pairs = [(day, key_id) for day in days]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(f"{self._prefix}index:built")
                for day in days:
                    pipe.smembers(self.index_name(day))
                built, *members = await pipe.execute()
            if not built:
                self._start_building()
                raise StoreFailed("the usage index is being built; try again shortly")
            pairs = [
                (day, k.decode()) for day, keys in zip(days, members, strict=True) for k in keys
            ]
        if not pairs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for day, key in pairs:
                pipe.hgetall(f"{self._prefix}{day}:{key}")
            hashes = await pipe.execute()
        out: list[tuple[Row, dict[str, float]]] = []
        for (day, key), fields in zip(pairs, hashes, strict=True):
            by_model: dict[str, dict[str, float]] = {}
            for field, raw in fields.items():
                model, _, figure = field.decode().partition("\t")
                if figure in FIGURES:
                    value = float(raw) if figure == "cost_usd" else int(raw)
                    by_model.setdefault(model, {})[figure] = value
            out += [((day, key, model), figures) for model, figures in by_model.items()]
        return out

    # -- the index of hashes written before it existed --------------------------------------

    async def start(self) -> None:
        """Nothing to check: the client connects on first use."""

    def _start_building(self) -> asyncio.Task[None]:
        """The one build of the index in this process (a report that finds it missing and
        the start-up's upkeep share it)."""
        if self._building is None or self._building.done():
            self._building = asyncio.get_running_loop().create_task(self._build())
        return self._building

    async def maintain(self) -> None:
        await asyncio.shield(self._start_building())

    async def _build(self) -> None:
        marker = f"{self._prefix}index:built"
        if await self._bounded(self._redis.exists(marker), self._timeout):
            return
        found = 0
        pattern = f"{self._prefix}[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]:*"
        pending: dict[str, set[str]] = {}
        scan: Any = self._redis.scan_iter(match=pattern, count=SCAN_BATCH)
        async for raw in scan:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            match = _DAY.match(name[len(self._prefix) :])
            if match is None:
                continue
            pending.setdefault(match.group(1), set()).add(match.group(2))
            found += 1
            if found % SCAN_BATCH == 0:
                await self._bounded(self._index(pending), self._timeout)
                pending = {}
        if pending:
            await self._bounded(self._index(pending), self._timeout)
        await self._bounded(self._redis.set(marker, "1"), self._timeout)
        if found:
            log.info("usage index built: %d earlier (day, key) hashes indexed", found)

    async def aclose(self) -> None:
        if self._building is not None:
            self._building.cancel()
