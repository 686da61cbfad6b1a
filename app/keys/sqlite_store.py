"""Keys in a SQLite file, for a gateway without Redis: every worker on one machine shares it.

Every change to a record is one `BEGIN IMMEDIATE` transaction that reads, computes and writes:
the write lock is taken first, so no other process's change can slip in between (a revoke is
never undone by a PATCH that read the record before it). Budget checks and settles are
transactions too. Every wait for the file is bounded (`app.state.sqlite_db`): a file held
locked by another process costs a request KEYS_DB_TIMEOUT_MS, then a 503.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from app.keys.budget_lua import held_member
from app.keys.model import ApiKeyRecord, BudgetPeriod, utcnow
from app.keys.store import (
    KeyChange,
    KeyStoreError,
    Reserved,
    SpendEntry,
    Transform,
    budget_rule,
    spend_buckets,
)
from app.state.sqlite_db import DEFAULT_TIMEOUT_SECONDS, SQLiteBusy, SQLiteDB, transaction

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_hashes (
    digest TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_spend (
    key_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, bucket)
);
CREATE TABLE IF NOT EXISTS key_holds (
    member TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    usd REAL NOT NULL,
    deadline REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS key_holds_by_key ON key_holds (key_id, deadline);
CREATE TABLE IF NOT EXISTS spend_batches (
    id TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
);
"""
SPEND_BATCH_TTL_SECONDS = 6 * 3600


class SQLiteKeyStore:
    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.path = Path(path)
        self._db = SQLiteDB(self.path, SCHEMA, timeout=timeout)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run(work)
        except SQLiteBusy as exc:
            raise KeyStoreError(f"SQLite: {exc}") from None

    async def start(self) -> None:
        await self._run(lambda db: None)

    async def aclose(self) -> None:
        await self._db.aclose()

    async def create(self, record: ApiKeyRecord) -> None:
        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                _write(db, record, [])

        await self._run(write)

    async def change(self, key_id: str, transform: Transform) -> ApiKeyRecord | None:
        def write(db: sqlite3.Connection) -> ApiKeyRecord | None:
            with transaction(db):
                row = db.execute("SELECT record FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                if row is None:
                    return None
                record = ApiKeyRecord.model_validate_json(row[0])
                change: KeyChange = transform(record)  # may refuse: the transaction rolls back
                if change.record != record:
                    _write(db, change.record, change.dropped_hashes)
                return change.record

        return await self._run(write)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        row = await self._run(
            lambda db: db.execute("SELECT record FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        )
        return ApiKeyRecord.model_validate_json(row[0]) if row else None

    async def find(self, digest: str) -> ApiKeyRecord | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT k.record FROM key_hashes h JOIN api_keys k ON k.id = h.key_id "
                "WHERE h.digest = ?",
                (digest,),
            ).fetchone()
        )
        return ApiKeyRecord.model_validate_json(row[0]) if row else None

    async def all(self) -> list[ApiKeyRecord]:
        rows = await self._run(
            lambda db: db.execute("SELECT record FROM api_keys ORDER BY id").fetchall()
        )
        return [ApiKeyRecord.model_validate_json(row[0]) for row in rows]

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

        def write(db: sqlite3.Connection) -> Reserved:
            now = time.time()
            with transaction(db):
                db.execute("DELETE FROM key_holds WHERE key_id = ? AND deadline < ?", (key_id, now))
                row = db.execute(
                    "SELECT usd FROM key_spend WHERE key_id = ? AND bucket = ?", (key_id, bucket)
                ).fetchone()
                spent = float(row[0]) if row else 0.0
                (held,) = db.execute(
                    "SELECT COALESCE(SUM(usd), 0) FROM key_holds WHERE key_id = ?", (key_id,)
                ).fetchone()
                outcome = budget_rule(spent, held, amount, budget)
                if outcome == "admitted":
                    db.execute(
                        "INSERT OR REPLACE INTO key_holds (member, key_id, usd, deadline) "
                        "VALUES (?, ?, ?, ?)",
                        (held_member(member, amount), key_id, amount, now + hold_seconds),
                    )
                return Reserved(outcome, spent, float(held))

        return await self._run(write)

    def split_spend(self, entries: list[SpendEntry]) -> list[list[SpendEntry]]:
        return [entries] if entries else []

    async def apply_spend(self, batch_id: str, entries: list[SpendEntry]) -> None:
        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                try:
                    db.execute(
                        "INSERT INTO spend_batches (id, applied_at) VALUES (?, ?)",
                        (batch_id, time.time()),
                    )
                except sqlite3.IntegrityError:
                    return  # applied before: its answer was lost, not its work
                for entry in entries:
                    if entry.member:
                        db.execute("DELETE FROM key_holds WHERE member = ?", (entry.member,))
                    if entry.amount:
                        _add(db, entry.key_id, entry.amount, spend_buckets(entry.at).values())
                db.execute(
                    "DELETE FROM spend_batches WHERE applied_at < ?",
                    (time.time() - SPEND_BATCH_TTL_SECONDS,),
                )

        await self._run(write)

    async def spend(self, key_id: str, now: datetime) -> dict[BudgetPeriod, float]:
        buckets = spend_buckets(now)

        def read(db: sqlite3.Connection) -> dict[BudgetPeriod, float]:
            rows = dict(
                db.execute(
                    "SELECT bucket, usd FROM key_spend WHERE key_id = ?", (key_id,)
                ).fetchall()
            )
            return {period: float(rows.get(bucket, 0.0)) for period, bucket in buckets.items()}

        return await self._run(read)


def _write(db: sqlite3.Connection, record: ApiKeyRecord, dropped: list[str]) -> None:
    db.execute(
        "INSERT INTO api_keys (id, record) VALUES (?, ?) "
        "ON CONFLICT(id) DO UPDATE SET record = excluded.record",
        (record.id, record.model_dump_json()),
    )
    for digest in record.hashes():
        db.execute(
            "INSERT OR REPLACE INTO key_hashes (digest, key_id) VALUES (?, ?)", (digest, record.id)
        )
    for digest in dropped:
        db.execute("DELETE FROM key_hashes WHERE digest = ?", (digest,))


def _add(db: sqlite3.Connection, key_id: str, amount: float, buckets: Iterable[str]) -> None:
    for bucket in buckets:
        db.execute(
            "INSERT INTO key_spend (key_id, bucket, usd) VALUES (?, ?, ?) "
            "ON CONFLICT(key_id, bucket) DO UPDATE SET usd = usd + excluded.usd",
            (key_id, bucket, amount),
        )
