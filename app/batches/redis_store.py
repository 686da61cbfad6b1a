"""The batch store in Redis (with REDIS_URL), in every REDIS_MODE.

The queue is one Redis Stream with one consumer group: a worker claims a chunk with XREADGROUP,
keeps it by resetting its idle time (XCLAIM … JUSTID) every third of its lease, and a chunk
whose worker stopped doing so is taken over with XAUTOCLAIM once it has been idle for a lease;
a done chunk is acknowledged and deleted (XACK, XDEL), so the stream holds exactly the chunks
not done yet. A chunk's outcome is recorded by a script that writes it only if none is there
(HSETNX) and adds its counters to its batch's in the same step: the first completion wins.

Everything of one batch (its record, counters, chunk plans and outcomes) carries the batch id as
a hash tag, so a Cluster keeps it in one slot and one script may touch all of it. The stream,
the indexes (an owner's files and batches, the active batches) and the file records are keys of
their own, written by separate calls, each idempotent.

Durability is Redis's: run it with AOF (`appendonly yes`) for a batch to survive a restart of
Redis itself (docs/batches.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from app.batches.records import (
    COUNTER_FIELDS,
    BatchRecord,
    ChunkOutcome,
    ChunkPlan,
    Claim,
    Counters,
    FilePurpose,
    FileRecord,
)
from app.batches.redis_scripts import COMPLETE, DROP_LEASE, LEASE, PLAN, REPLACE
from app.batches.store import QueueStats, StoredBatch, StoreUnavailable
from app.state.redis_client import REDIS_FAILURES, RedisClient, mget

T = TypeVar("T")
GROUP = "workers"
_PAGE = 200


class RedisBatchStore:
    def __init__(self, redis: RedisClient, *, prefix: str, timeout: float) -> None:
        self.backend = "Redis"
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._queue = f"{prefix}queue"
        self._replace = redis.register_script(REPLACE)
        self._plan = redis.register_script(PLAN)
        self._complete = redis.register_script(COMPLETE)
        self._lease = redis.register_script(LEASE)
        self._drop_lease = redis.register_script(DROP_LEASE)
        self._autoclaim_from = "0-0"  # where the next look for stale claims starts

    # -- keys -------------------------------------------------------------------------------

    def _batch(self, batch_id: str) -> str:
        return f"{self._prefix}b:{{{batch_id}}}"

    def _file(self, file_id: str) -> str:
        return f"{self._prefix}f:{file_id}"

    def _owner(self, owner: str, kind: str) -> str:
        return f"{self._prefix}owner:{owner}:{kind}"

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await work()
        except REDIS_FAILURES as exc:
            raise StoreUnavailable(f"Redis: {type(exc).__name__}") from None

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # the client is the gateway's, closed with it

    # -- files ------------------------------------------------------------------------------

    async def put_file(self, record: FileRecord) -> None:
        async def work() -> None:
            r = self._redis
            await r.set(self._file(record.id), record.dumps())
            await r.zadd(
                self._owner(record.owner, "files"), {record.id: _score(record.created_at)}, nx=True
            )
            if record.expires_at is not None:
                await r.zadd(f"{self._prefix}files-expiry", {record.id: record.expires_at})

        await self._call(work)

    async def get_file(self, file_id: str) -> FileRecord | None:
        raw = await self._call(lambda: self._redis.get(self._file(file_id)))
        return FileRecord.loads(raw) if raw else None

    async def delete_file(self, record: FileRecord) -> bool:
        async def work() -> bool:
            r = self._redis
            gone = await r.delete(self._file(record.id))
            await r.zrem(self._owner(record.owner, "files"), record.id)
            await r.zrem(f"{self._prefix}files-expiry", record.id)
            return bool(gone)

        return await self._call(work)

    async def list_files(
        self, owner: str, purpose: FilePurpose | None, after: str | None, limit: int, asc: bool
    ) -> tuple[list[FileRecord], bool]:
        async def work() -> tuple[list[FileRecord], bool]:
            r, key = self._redis, self._owner(owner, "files")
            rank, by_rank = (r.zrank, r.zrange) if asc else (r.zrevrank, r.zrevrange)
            start = 0
            if after is not None:
                found: Any = await rank(key, after)
                if found is None:
                    return [], False
                start = int(found) + 1
            out: list[FileRecord] = []
            while len(out) <= limit:
                ids = await by_rank(key, start, start + _PAGE - 1)
                if not ids:
                    break
                start += len(ids)
                raws = await mget(r, [self._file(_text(i)) for i in ids])
                for raw in raws:
                    if raw is None:
                        continue
                    record = FileRecord.loads(raw)
                    if purpose is None or record.purpose == purpose:
                        out.append(record)
            return out[:limit], len(out) > limit

        return await self._call(work)

    async def expired_files(self, now: int, limit: int) -> list[FileRecord]:
        async def work() -> list[FileRecord]:
            key = f"{self._prefix}files-expiry"
            ids = await self._redis.zrangebyscore(key, "-inf", now, start=0, num=limit)
            if not ids:
                return []
            raws = await mget(self._redis, [self._file(_text(i)) for i in ids])
            gone = [_text(i) for i, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:
                await self._redis.zrem(key, *gone)
            return [FileRecord.loads(raw) for raw in raws if raw is not None]

        return await self._call(work)

    # -- batches ----------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None:
        async def work() -> None:
            r = self._redis
            await r.hset(
                self._batch(record.id),
                mapping={
                    "record": record.dumps(),
                    "status": record.status,
                    "version": 0,
                    "chunks": 0,
                    **dict.fromkeys(COUNTER_FIELDS, 0),
                },
            )
            await r.sadd(f"{self._prefix}active", record.id)
            score = _score(record.created_at)
            await r.zadd(self._owner(record.owner, "batches"), {record.id: score})
            await r.zadd(f"{self._prefix}batches", {record.id: score})

        await self._call(work)

    async def get_batch(self, batch_id: str) -> StoredBatch | None:
        found = await self._call(lambda: self._redis.hgetall(self._batch(batch_id)))
        return _stored(found) if found else None

    async def replace_batch(self, record: BatchRecord) -> bool:
        changed = await self._call(
            lambda: self._replace(
                keys=[self._batch(record.id)],
                args=[record.version, record.dumps(), record.status],
            )
        )
        if changed:
            record.version += 1
        return bool(changed)

    async def list_batches(
        self, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[StoredBatch], bool]:
        async def work() -> tuple[list[StoredBatch], bool]:
            r = self._redis
            key = self._owner(owner, "batches") if owner else f"{self._prefix}batches"
            start = 0
            if after is not None:
                found: Any = await r.zrevrank(key, after)
                if found is None:
                    return [], False
                start = int(found) + 1
            ids = await r.zrevrange(key, start, start + limit)  # one more: is there a next page
            out = []
            for batch_id in ids[:limit]:
                found_batch = await r.hgetall(self._batch(_text(batch_id)))
                if found_batch:
                    out.append(_stored(found_batch))
            return out, len(ids) > limit

        return await self._call(work)

    async def active_batches(self) -> list[str]:
        ids = await self._call(lambda: self._redis.smembers(f"{self._prefix}active"))
        return sorted(_text(i) for i in ids)

    async def forget_active(self, batch_id: str) -> None:
        await self._call(lambda: self._redis.srem(f"{self._prefix}active", batch_id))

    async def take_lease(self, batch_id: str, worker: str, seconds: float) -> bool:
        now = time.time()
        taken = await self._call(
            lambda: self._lease(
                keys=[self._batch(batch_id)], args=[worker, repr(now), repr(now + seconds)]
            )
        )
        return bool(taken)

    async def drop_lease(self, batch_id: str, worker: str) -> None:
        await self._call(lambda: self._drop_lease(keys=[self._batch(batch_id)], args=[worker]))

    # -- chunks -----------------------------------------------------------------------------

    async def plan_chunks(self, record: BatchRecord, plans: list[ChunkPlan]) -> bool:
        args: list[Any] = [record.version, record.dumps(), record.status]
        for plan in plans:
            args += [plan.index, plan.dumps()]
        key = self._batch(record.id)
        changed = await self._call(lambda: self._plan(keys=[key, key + ":plans"], args=args))
        if not changed:
            return False
        record.version += 1
        await self.enqueue_chunks(record.id)
        return True

    async def enqueue_chunks(self, batch_id: str) -> None:
        async def work() -> None:
            r, key = self._redis, self._batch(batch_id)
            planned = await r.hkeys(key + ":plans")
            done = set(await r.hkeys(key + ":done"))
            try:
                await r.xgroup_create(self._queue, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            for index in sorted((i for i in planned if i not in done), key=int):
                await r.xadd(self._queue, {"b": batch_id, "i": index})
            await r.hset(key, "enqueued", 1)

        await self._call(work)

    async def get_plan(self, batch_id: str, index: int) -> ChunkPlan | None:
        raw = await self._call(lambda: self._redis.hget(self._batch(batch_id) + ":plans", index))
        return ChunkPlan.loads(raw) if raw else None

    async def plans(self, batch_id: str) -> list[ChunkPlan]:
        found = await self._call(lambda: self._redis.hvals(self._batch(batch_id) + ":plans"))
        return sorted((ChunkPlan.loads(raw) for raw in found), key=lambda p: p.index)

    async def claim(self, worker: str, lease: float) -> Claim | None:
        async def work() -> Claim | None:
            for _ in range(16):  # skipping duplicates of chunks already done
                entry = await self._next_entry(worker, lease)
                if entry is None:
                    return None
                entry_id, batch_id, index = entry
                if await self._redis.hexists(self._batch(batch_id) + ":done", index):
                    await self._drop(entry_id)
                    continue
                return Claim(batch_id, index, entry_id)
            return None

        return await self._call(work)

    async def _next_entry(self, worker: str, lease: float) -> tuple[str, str, int] | None:
        r = self._redis
        try:
            answer = await r.xautoclaim(
                self._queue, GROUP, worker, int(lease * 1000), self._autoclaim_from, count=1
            )
            self._autoclaim_from = _text(answer[0])
            entries = answer[1]
            if not entries:
                read: Any = await r.xreadgroup(GROUP, worker, {self._queue: ">"}, count=1)
                entries = read[0][1] if read else []
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return None  # nothing was ever queued
            raise
        for entry_id, entry in entries:
            if entry:  # an entry deleted meanwhile comes back without its fields
                fields = {_text(k): _text(v) for k, v in entry.items()}
                return _text(entry_id), fields["b"], int(fields["i"])
            await self._drop(_text(entry_id))
        return None

    async def _drop(self, entry_id: str) -> None:
        await self._redis.xack(self._queue, GROUP, entry_id)
        await self._redis.xdel(self._queue, entry_id)

    async def renew(self, claim: Claim, worker: str, lease: float) -> None:
        await self._call(
            lambda: self._redis.xclaim(self._queue, GROUP, worker, 0, [claim.token], justid=True)
        )

    async def release(self, claim: Claim, worker: str) -> None:
        # Idle for longer than any lease: the next XAUTOCLAIM of any worker takes it.
        await self._call(
            lambda: self._redis.xclaim(
                self._queue, GROUP, worker, 0, [claim.token], idle=10**9, justid=True
            )
        )

    async def complete(self, claim: Claim, outcome: ChunkOutcome) -> tuple[bool, bool]:
        args: list[Any] = [claim.index, outcome.dumps()]
        counters = outcome.counters
        for name in COUNTER_FIELDS:
            value = getattr(counters, name)
            if value:
                args += [name, repr(value) if name == "spend_usd" else int(value)]
        key = self._batch(claim.batch_id)

        async def work() -> tuple[bool, bool]:
            won, all_done = await self._complete(keys=[key, key + ":done"], args=args)
            await self._drop(claim.token)
            return bool(won), bool(all_done)

        return await self._call(work)

    async def outcomes(self, batch_id: str) -> list[ChunkOutcome]:
        found = await self._call(lambda: self._redis.hvals(self._batch(batch_id) + ":done"))
        return sorted((ChunkOutcome.loads(raw) for raw in found), key=lambda o: o.index)

    async def queue_stats(self, now: float) -> QueueStats:
        async def work() -> QueueStats:
            r = self._redis
            depth = await r.xlen(self._queue)
            first = await r.xrange(self._queue, "-", "+", count=1)
            if not first:
                return QueueStats(depth, 0.0)
            millis = int(_text(first[0][0]).split("-")[0])
            return QueueStats(depth, max(0.0, now - millis / 1000))

        return await self._call(work)


def _score(created_at: int) -> float:
    """A listing's order: `created_at`, then, within its second, the order things were made."""
    return created_at + (time.time() % 1.0) * 0.999


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored(found: dict[Any, Any]) -> StoredBatch:
    fields = {_text(k): v for k, v in found.items()}
    counters = Counters()
    for name in COUNTER_FIELDS:
        kind = float if name == "spend_usd" else int
        setattr(counters, name, kind(fields.get(name, b"0")))
    record = BatchRecord.loads(fields["record"], int(fields.get("version", b"0")))
    return StoredBatch(record, counters, fields.get("enqueued") == b"1")
