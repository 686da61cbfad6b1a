"""Keys in Redis: shared by every worker and replica that uses the same Redis and prefix.

`{prefix}rec:{id}` holds the record as JSON, `{prefix}hash:{sha256}` the id it belongs to,
`{prefix}ids` the set of ids, and `{prefix}spend:{id}` a hash of spend per bucket
(`day:…`, `month:…`, `total`), changed by one script so a budget check and its charge are one
atomic step across replicas. Give Redis append-only persistence so keys outlive it.

In a Redis Cluster every script touches one key (Cluster-safe as it is); a save spans several
slots, so it is a pipeline without MULTI, written record first: a save cut short leaves at most
an old secret working (its hash not deleted yet) or a new one not yet usable; never a revoked
or disabled key that works, as that lives in the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

from app.keys.model import ApiKeyRecord, BudgetPeriod
from app.keys.store import KeyStoreError, spend_buckets
from app.state.redis_client import REDIS_FAILURES, RedisClient, is_cluster, mget

T = TypeVar("T")

# KEYS: the spend hash. ARGV: amount, budget ('' for none), the budget's bucket, then the
# buckets to add to. Redis scripts run alone, so no other replica's charge slips in between.
RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
if ARGV[2] ~= '' and spent >= tonumber(ARGV[2]) then
  return {0, tostring(spent)}
end
for i = 4, #ARGV do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[1])
end
return {1, tostring(spent)}
"""


def spend_key(prefix: str, key_id: str) -> str:
    """A key's spend hash; the per-key limits' keys share its slot (`app.keys.checks`)."""
    return f"{prefix}spend:{key_id}"


class RedisKeyStore:
    def __init__(self, redis: RedisClient, *, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._reserve = redis.register_script(RESERVE)
        # MULTI needs every key in one slot in a Cluster; one key's writes need no MULTI there.
        self._atomic = not is_cluster(redis)

    async def start(self) -> None:
        """Nothing to prepare: the client connects on first use."""

    async def aclose(self) -> None:
        """The gateway owns the client and closes it."""

    def _rec(self, key_id: str) -> str:
        return f"{self._prefix}rec:{key_id}"

    def _hash(self, digest: str) -> str:
        return f"{self._prefix}hash:{digest}"

    def _spend(self, key_id: str) -> str:
        return spend_key(self._prefix, key_id)

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except REDIS_FAILURES as exc:
            raise KeyStoreError(f"Redis: {type(exc).__name__}") from exc

    async def create(self, record: ApiKeyRecord) -> None:
        await self.save(record, [])

    async def save(self, record: ApiKeyRecord, dropped_hashes: list[str]) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=self._atomic) as pipe:
                pipe.set(self._rec(record.id), record.model_dump_json())
                pipe.sadd(f"{self._prefix}ids", record.id)
                for digest in record.hashes():
                    pipe.set(self._hash(digest), record.id)
                for digest in dropped_hashes:
                    pipe.delete(self._hash(digest))
                await pipe.execute()

        await self._run(write())

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        raw = await self._run(self._redis.get(self._rec(key_id)))
        return ApiKeyRecord.model_validate_json(raw) if raw else None

    async def find(self, digest: str) -> ApiKeyRecord | None:
        key_id = await self._run(self._redis.get(self._hash(digest)))
        return await self.get(key_id.decode()) if key_id else None

    async def all(self) -> list[ApiKeyRecord]:
        ids = sorted(
            i.decode() for i in await self._run(self._redis.smembers(f"{self._prefix}ids"))
        )
        if not ids:
            return []
        raws = await self._run(mget(self._redis, [self._rec(i) for i in ids]))
        return [ApiKeyRecord.model_validate_json(raw) for raw in raws if raw]

    async def reserve(
        self, key_id: str, amount: float, period: BudgetPeriod, budget: float | None, now: datetime
    ) -> tuple[bool, float]:
        buckets = spend_buckets(now)
        admitted, spent = await self._run(
            self._reserve(
                keys=[self._spend(key_id)],
                args=[
                    repr(amount),
                    "" if budget is None else repr(budget),
                    buckets[period],
                    *list(buckets.values()),
                ],
            )
        )
        return bool(admitted), float(spent)

    async def add_spend(self, key_id: str, amount: float, now: datetime) -> None:
        async def write() -> None:
            async with self._redis.pipeline(transaction=self._atomic) as pipe:
                for bucket in spend_buckets(now).values():
                    pipe.hincrbyfloat(self._spend(key_id), bucket, amount)
                await pipe.execute()

        await self._run(write())

    async def spend(self, key_id: str, now: datetime) -> dict[BudgetPeriod, float]:
        buckets = spend_buckets(now)
        values = await self._run(self._redis.hmget(self._spend(key_id), list(buckets.values())))
        return {period: float(v) if v else 0.0 for period, v in zip(buckets, values, strict=True)}
