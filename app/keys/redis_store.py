"""Keys in Redis: shared by every worker and replica that uses the same Redis and prefix.

`{prefix}rec:{id}` holds the record as JSON, `{prefix}hash:{sha256}` the id it belongs to,
`{prefix}ids` the set of ids, `{prefix}spend:{id}` a hash of spend per bucket (`day:…`,
`month:…`, `total`) and `{prefix}held:{id}:{…}` the reservations of requests in flight (in the
spend hash's slot). Give Redis append-only persistence so keys outlive it.

Every change to a record (update, rotate, revoke) is a compare-and-set of that one key by a
script: read, compute, and write only if the record is still what was read; else read again.
So two admins (or two workers) changing one key never lose each other's change: a revoke or
a disable is never undone by a PATCH or a rotation that read the record before it. One key per
script, so it is the same in a Cluster. The hash index is secondary: a lookup believes a
secret only if the record itself names its hash (`ApiKeyRecord.matches`), so a rotation writes
the new hash's index first (harmless alone), then the record, then drops the old index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

from app.keys.budget_lua import BUDGET_FUNCTION
from app.keys.model import ApiKeyRecord, BudgetPeriod, utcnow
from app.keys.store import (
    ChangeConflict,
    KeyStoreError,
    Reservation,
    Reserved,
    SpendEntry,
    Transform,
    spend_buckets,
)
from app.state.redis_client import REDIS_FAILURES, RedisClient, by_slot, hash_tag, is_cluster, mget

T = TypeVar("T")

CHANGE_TRIES = 20
OUTCOMES: dict[int, Reservation] = {0: "admitted", 1: "spent", 2: "in_flight"}
SPEND_BATCH_TTL_SECONDS = 6 * 3600

# KEYS[1]: the record. ARGV: what it was read as, what it becomes. 1: written, 0: it changed.
COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the spend hash, the reservations. ARGV: member, amount, budget, the budget's bucket,
# the hold (ms). Returns outcome (0 admitted, 1 spent, 2 held in flight), spent, held.
RESERVE = (
    BUDGET_FUNCTION
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local outcome, spent, held = budget(KEYS[1], KEYS[2], now, ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                                    ARGV[5])
if outcome == 0 then hold(KEYS[2], now, ARGV[1], ARGV[2], ARGV[5]) end
return {outcome, tostring(spent), tostring(held)}
"""
)

# KEYS[1]: the batch's ID key, then spend hashes and reservation sets. ARGV[1]: the ID's TTL,
# then six per entry: spend key number, reservations key number (into KEYS), the member to
# release ('' none), the amount, its day and month buckets. -1: applied before.
APPLY_SPEND = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return -1
end
for i = 2, #ARGV, 6 do
  local spend = KEYS[tonumber(ARGV[i])]
  if ARGV[i + 2] ~= '' then
    redis.call('ZREM', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  end
  if tonumber(ARGV[i + 3]) ~= 0 then
    redis.call('HINCRBYFLOAT', spend, ARGV[i + 4], ARGV[i + 3])
    redis.call('HINCRBYFLOAT', spend, ARGV[i + 5], ARGV[i + 3])
    redis.call('HINCRBYFLOAT', spend, 'total', ARGV[i + 3])
  end
end
return 1
"""


def spend_key(prefix: str, key_id: str) -> str:
    """A key's spend hash; its reservations and per-key limits share its slot."""
    return f"{prefix}spend:{key_id}"


def hold_key(prefix: str, key_id: str) -> str:
    """A key's reservations in flight: a sorted set in its spend hash's slot."""
    return f"{prefix}held:{key_id}:{{{hash_tag(spend_key(prefix, key_id))}}}"


class RedisKeyStore:
    def __init__(self, redis: RedisClient, *, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._cas = redis.register_script(COMPARE_AND_SET)
        self._reserve = redis.register_script(RESERVE)
        self._apply_spend = redis.register_script(APPLY_SPEND)

    async def start(self) -> None:
        """Nothing to prepare: the client connects on first use."""

    async def aclose(self) -> None:
        """The gateway owns the client and closes it."""

    def _rec(self, key_id: str) -> str:
        return f"{self._prefix}rec:{key_id}"

    def _hash(self, digest: str) -> str:
        return f"{self._prefix}hash:{digest}"

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except REDIS_FAILURES as exc:
            raise KeyStoreError(f"Redis: {type(exc).__name__}") from exc

    async def create(self, record: ApiKeyRecord) -> None:
        async def write() -> None:
            # Record first: an index that points at nothing yet is never believed.
            await self._redis.set(self._rec(record.id), record.model_dump_json())
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(f"{self._prefix}ids", record.id)
                pipe.set(self._hash(record.secret_hash), record.id)
                await pipe.execute()

        await self._run(write())

    async def change(self, key_id: str, transform: Transform) -> ApiKeyRecord | None:
        for _ in range(CHANGE_TRIES):
            raw = await self._run(self._redis.get(self._rec(key_id)))
            if raw is None:
                return None
            record = ApiKeyRecord.model_validate_json(raw)
            change = transform(record)
            if change.record == record:
                return record  # nothing to write (revoking a revoked key)
            added = [h for h in change.record.hashes() if h not in record.hashes()]
            for digest in added:  # not believed until the record names it
                await self._run(self._redis.set(self._hash(digest), key_id))
            written = await self._run(
                self._cas(keys=[self._rec(key_id)], args=[raw, change.record.model_dump_json()])
            )
            if written:
                for digest in change.dropped_hashes:
                    await self._run(self._redis.delete(self._hash(digest)))
                return change.record
            for digest in added:
                await self._run(self._redis.delete(self._hash(digest)))
        raise ChangeConflict(f"the record of {key_id} kept changing")

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        raw = await self._run(self._redis.get(self._rec(key_id)))
        return ApiKeyRecord.model_validate_json(raw) if raw else None

    async def find(self, digest: str) -> ApiKeyRecord | None:
        key_id = await self._run(self._redis.get(self._hash(digest)))
        return await self.get(_text(key_id)) if key_id else None

    async def all(self) -> list[ApiKeyRecord]:
        ids = sorted(_text(i) for i in await self._run(self._redis.smembers(f"{self._prefix}ids")))
        if not ids:
            return []
        raws = await self._run(mget(self._redis, [self._rec(i) for i in ids]))
        return [ApiKeyRecord.model_validate_json(raw) for raw in raws if raw]

    async def reserve(
        self,
        key_id: str,
        member: str,
        amount: float,
        period: BudgetPeriod,
        budget: float,
        hold_seconds: float,
    ) -> Reserved:
        bucket = spend_buckets(utcnow())[period]
        outcome, spent, held = await self._run(
            self._reserve(
                keys=[spend_key(self._prefix, key_id), hold_key(self._prefix, key_id)],
                args=[member, repr(amount), repr(budget), bucket, round(hold_seconds * 1000)],
            )
        )
        return Reserved(OUTCOMES[int(outcome)], float(spent), float(held))

    def split_spend(self, entries: list[SpendEntry]) -> list[list[SpendEntry]]:
        return by_slot(self._redis, entries, lambda e: spend_key(self._prefix, e.key_id))

    async def apply_spend(self, batch_id: str, entries: list[SpendEntry]) -> None:
        names: dict[str, int] = {}
        args: list[str | int] = [SPEND_BATCH_TTL_SECONDS]
        for entry in entries:
            spend = names.setdefault(spend_key(self._prefix, entry.key_id), len(names) + 2)
            held = names.setdefault(hold_key(self._prefix, entry.key_id), len(names) + 2)
            buckets = spend_buckets(entry.at)
            args += [
                spend,
                held,
                entry.member or "",
                repr(entry.amount),
                buckets["day"],
                buckets["month"],
            ]
        if not entries:
            return
        batch_key = f"{self._prefix}spendbatch:{batch_id}"
        if is_cluster(self._redis):  # in the slot of the batch's keys
            batch_key += "{" + hash_tag(next(iter(names))) + "}"
        await self._run(self._apply_spend(keys=[batch_key, *names], args=args))

    async def spend(self, key_id: str, now: datetime) -> dict[BudgetPeriod, float]:
        buckets = spend_buckets(now)
        values = await self._run(
            self._redis.hmget(spend_key(self._prefix, key_id), list(buckets.values()))
        )
        return {period: float(v) if v else 0.0 for period, v in zip(buckets, values, strict=True)}


def _text(value: bytes | str) -> str:
    """The client answers bytes (it does not decode responses); typed for either."""
    return value.decode() if isinstance(value, bytes) else value
