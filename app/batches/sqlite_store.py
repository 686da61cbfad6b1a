"""The batch store in a SQLite file (BATCH_DB, app/batches/sqlite_db.py), for a gateway without
Redis: every worker process on the machine shares it.

Each step that must be atomic is one `BEGIN IMMEDIATE` transaction: claiming a chunk (the oldest
waiting one, else one whose lease ran out), completing one (its outcome and its batch's
counters), replacing a record (only at the version it was read at).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from app.batches.records import (
    ACTIVE,
    COUNTER_FIELDS,
    BatchRecord,
    ChunkOutcome,
    ChunkPlan,
    Claim,
    Counters,
    FilePurpose,
    FileRecord,
)
from app.batches.sqlite_db import SQLiteFile
from app.batches.store import QueueStats, StoredBatch
from app.state.sqlite_db import transaction

_COUNTERS = ", ".join(COUNTER_FIELDS)
_BATCH_COLUMNS = f"record, version, enqueued, {_COUNTERS}"
_ACTIVE = tuple(sorted(ACTIVE))


class SQLiteBatchStore:
    def __init__(self, path: str | Path, *, timeout: float) -> None:
        self.backend = f"SQLite file {path}"
        self._db = SQLiteFile(path, timeout=timeout)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        await self._db.aclose()

    # -- files ------------------------------------------------------------------------------

    async def put_file(self, record: FileRecord) -> None:
        def write(db: sqlite3.Connection) -> None:
            # An upsert, not INSERT OR REPLACE: the row keeps its rowid (its place in listings).
            db.execute(
                "INSERT INTO batch_files (id, owner, purpose, created_at, expires_at, record) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "expires_at = excluded.expires_at, record = excluded.record",
                (
                    record.id,
                    record.owner,
                    record.purpose,
                    record.created_at,
                    record.expires_at,
                    record.dumps(),
                ),
            )

        await self._db.run(write)

    async def get_file(self, file_id: str) -> FileRecord | None:
        row = await self._db.read(
            lambda db: db.execute(
                "SELECT record FROM batch_files WHERE id = ?", (file_id,)
            ).fetchone(),
            None,
        )
        return FileRecord.loads(row[0]) if row else None

    async def delete_file(self, record: FileRecord) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM batch_files WHERE id = ?", (record.id,)).rowcount > 0

        return await self._db.read(write, False)

    async def list_files(
        self, owner: str, purpose: FilePurpose | None, after: str | None, limit: int, asc: bool
    ) -> tuple[list[FileRecord], bool]:
        def read(db: sqlite3.Connection) -> tuple[list[FileRecord], bool]:
            where, args = "owner = ?", [owner]
            if purpose is not None:
                where += " AND purpose = ?"
                args.append(purpose)
            if after is not None:
                found = db.execute(
                    "SELECT created_at, rowid FROM batch_files WHERE id = ? AND owner = ?",
                    (after, owner),
                ).fetchone()
                if found is None:
                    return [], False
                where += f" AND (created_at, rowid) {'>' if asc else '<'} (?, ?)"
                args += [found[0], found[1]]
            order = "ASC" if asc else "DESC"
            # Ties within a second in the order the files were made (rowid).
            rows = db.execute(
                f"SELECT record FROM batch_files WHERE {where} "
                f"ORDER BY created_at {order}, rowid {order} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            return [FileRecord.loads(r[0]) for r in rows[:limit]], len(rows) > limit

        return await self._db.read(read, ([], False))

    async def expired_files(self, now: int, limit: int) -> list[FileRecord]:
        rows: list[Any] = await self._db.read(
            lambda db: db.execute(
                "SELECT record FROM batch_files WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "LIMIT ?",
                (now, limit),
            ).fetchall(),
            [],
        )
        return [FileRecord.loads(r[0]) for r in rows]

    # -- batches ----------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO batches (id, owner, status, created_at, version, record) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                (record.id, record.owner, record.status, record.created_at, record.dumps()),
            )

        await self._db.run(write)

    async def get_batch(self, batch_id: str) -> StoredBatch | None:
        row = await self._db.read(
            lambda db: db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
            ).fetchone(),
            None,
        )
        return _stored(row) if row else None

    async def replace_batch(self, record: BatchRecord) -> bool:
        return await self._db.run(lambda db: _replace(db, record))

    async def list_batches(
        self, owner: str | None, after: str | None, limit: int
    ) -> tuple[list[StoredBatch], bool]:
        def read(db: sqlite3.Connection) -> tuple[list[StoredBatch], bool]:
            where, args = ("owner = ?", [owner]) if owner is not None else ("1 = 1", [])
            if after is not None:
                found = db.execute(
                    f"SELECT created_at, rowid FROM batches WHERE id = ? AND {where}",
                    (after, *args),
                ).fetchone()
                if found is None:
                    return [], False
                where += " AND (created_at, rowid) < (?, ?)"
                args += [found[0], found[1]]
            rows = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {where} "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            return [_stored(r) for r in rows[:limit]], len(rows) > limit

        return await self._db.read(read, ([], False))

    async def active_batches(self) -> list[str]:
        marks = ", ".join("?" * len(_ACTIVE))
        rows: list[Any] = await self._db.read(
            lambda db: db.execute(
                f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY created_at", _ACTIVE
            ).fetchall(),
            [],
        )
        return [r[0] for r in rows]

    async def forget_active(self, batch_id: str) -> None:
        return None  # the status column says it

    async def take_lease(self, batch_id: str, worker: str, seconds: float) -> bool:
        now = time.time()

        def write(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
                    "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                    (worker, now + seconds, batch_id, worker, now),
                ).rowcount
                > 0
            )

        return await self._db.run(write)

    async def drop_lease(self, batch_id: str, worker: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE batches SET lease_owner = NULL, lease_until = 0 "
                "WHERE id = ? AND lease_owner = ?",
                (batch_id, worker),
            )

        await self._db.run(write)

    # -- chunks -----------------------------------------------------------------------------

    async def plan_chunks(self, record: BatchRecord, plans: list[ChunkPlan]) -> bool:
        queued = time.time()

        def write(db: sqlite3.Connection) -> bool:
            with transaction(db):
                if not _replace(db, record):
                    return False
                db.executemany(
                    "INSERT OR IGNORE INTO batch_chunks (batch_id, idx, plan, queued_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(record.id, p.index, p.dumps(), queued) for p in plans],
                )
                db.execute("UPDATE batches SET enqueued = 1 WHERE id = ?", (record.id,))
                return True

        return await self._db.run(write)

    async def enqueue_chunks(self, batch_id: str) -> None:
        return None  # planned chunks are queued rows already (`plan_chunks`)

    async def get_plan(self, batch_id: str, index: int) -> ChunkPlan | None:
        row = await self._db.read(
            lambda db: db.execute(
                "SELECT plan FROM batch_chunks WHERE batch_id = ? AND idx = ?", (batch_id, index)
            ).fetchone(),
            None,
        )
        return ChunkPlan.loads(row[0]) if row else None

    async def plans(self, batch_id: str) -> list[ChunkPlan]:
        rows: list[Any] = await self._db.read(
            lambda db: db.execute(
                "SELECT plan FROM batch_chunks WHERE batch_id = ? ORDER BY idx", (batch_id,)
            ).fetchall(),
            [],
        )
        return [ChunkPlan.loads(r[0]) for r in rows]

    async def claim(self, worker: str, lease: float) -> Claim | None:
        now = time.time()

        def write(db: sqlite3.Connection) -> Claim | None:
            with transaction(db):
                row = db.execute(
                    "SELECT batch_id, idx FROM batch_chunks WHERE state = 'waiting' "
                    "ORDER BY queued_at, batch_id, idx LIMIT 1"
                ).fetchone()
                if row is None:  # else one whose worker stopped renewing its lease
                    row = db.execute(
                        "SELECT batch_id, idx FROM batch_chunks WHERE state = 'claimed' AND "
                        "lease_until < ? ORDER BY queued_at, batch_id, idx LIMIT 1",
                        (now,),
                    ).fetchone()
                if row is None:
                    return None
                db.execute(
                    "UPDATE batch_chunks SET state = 'claimed', worker = ?, lease_until = ? "
                    "WHERE batch_id = ? AND idx = ?",
                    (worker, now + lease, row[0], row[1]),
                )
                return Claim(row[0], row[1], worker)

        return await self._db.read(write, None)

    async def renew(self, claim: Claim, worker: str, lease: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE batch_chunks SET lease_until = ? WHERE batch_id = ? AND idx = ? AND "
                "state = 'claimed' AND worker = ?",
                (time.time() + lease, claim.batch_id, claim.index, worker),
            )

        await self._db.run(write)

    async def release(self, claim: Claim, worker: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE batch_chunks SET state = 'waiting', worker = NULL, lease_until = 0 "
                "WHERE batch_id = ? AND idx = ? AND state = 'claimed' AND worker = ?",
                (claim.batch_id, claim.index, worker),
            )

        await self._db.run(write)

    async def complete(self, claim: Claim, outcome: ChunkOutcome) -> tuple[bool, bool]:
        added = outcome.counters

        def write(db: sqlite3.Connection) -> tuple[bool, bool]:
            with transaction(db):
                won = (
                    db.execute(
                        "UPDATE batch_chunks SET state = 'done', outcome = ?, worker = NULL "
                        "WHERE batch_id = ? AND idx = ? AND state != 'done'",
                        (outcome.dumps(), claim.batch_id, claim.index),
                    ).rowcount
                    > 0
                )
                if won:
                    sets = ", ".join(f"{f} = {f} + ?" for f in COUNTER_FIELDS)
                    db.execute(
                        f"UPDATE batches SET {sets} WHERE id = ?",
                        (*(getattr(added, f) for f in COUNTER_FIELDS), claim.batch_id),
                    )
                left = db.execute(
                    "SELECT COUNT(*) FROM batch_chunks WHERE batch_id = ? AND state != 'done'",
                    (claim.batch_id,),
                ).fetchone()[0]
                return won, left == 0

        return await self._db.run(write)

    async def outcomes(self, batch_id: str) -> list[ChunkOutcome]:
        rows: list[Any] = await self._db.read(
            lambda db: db.execute(
                "SELECT outcome FROM batch_chunks WHERE batch_id = ? AND state = 'done' "
                "ORDER BY idx",
                (batch_id,),
            ).fetchall(),
            [],
        )
        return [ChunkOutcome.loads(r[0]) for r in rows]

    async def queue_stats(self, now: float) -> QueueStats:
        row = await self._db.read(
            lambda db: db.execute(
                "SELECT COUNT(*), MIN(queued_at) FROM batch_chunks WHERE state != 'done'"
            ).fetchone(),
            (0, None),
        )
        count, oldest = row
        return QueueStats(count, max(0.0, now - oldest) if oldest is not None else 0.0)


def _stored(row: Any) -> StoredBatch:
    record, version, enqueued, *counters = row
    values = dict(zip(COUNTER_FIELDS, counters, strict=True))
    return StoredBatch(BatchRecord.loads(record, version), Counters(**values), bool(enqueued))


def _replace(db: sqlite3.Connection, record: BatchRecord) -> bool:
    changed = db.execute(
        "UPDATE batches SET record = ?, status = ?, version = version + 1 "
        "WHERE id = ? AND version = ?",
        (record.dumps(), record.status, record.id, record.version),
    ).rowcount
    if changed:
        record.version += 1
    return changed > 0
