"""Keys in a SQLite file, for a gateway without Redis: every worker on one machine shares it.

WAL mode lets readers run while one process writes, and `busy_timeout` makes a writer wait its
turn instead of failing. The stdlib `sqlite3` runs on one dedicated thread per process: the
calls are few (a lookup cache sits in front) and short, and `aiosqlite` would do exactly this
— a thread per connection — as one more dependency.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from app.keys.model import ApiKeyRecord, BudgetPeriod
from app.keys.store import KeyStoreError, spend_buckets

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
"""

BUSY_TIMEOUT_MS = 5000


class SQLiteKeyStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keys-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the process
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return work(self._connect())
            except (sqlite3.Error, OSError) as exc:
                raise KeyStoreError(f"SQLite: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def start(self) -> None:
        await self._run(lambda db: None)

    async def aclose(self) -> None:
        def close(_: sqlite3.Connection) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._db is not None:
            await self._run(close)
        self._executor.shutdown(wait=False)

    async def create(self, record: ApiKeyRecord) -> None:
        await self.save(record, [])

    async def save(self, record: ApiKeyRecord, dropped_hashes: list[str]) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO api_keys (id, record) VALUES (?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                    (record.id, record.model_dump_json()),
                )
                for digest in record.hashes():
                    db.execute(
                        "INSERT OR REPLACE INTO key_hashes (digest, key_id) VALUES (?, ?)",
                        (digest, record.id),
                    )
                for digest in dropped_hashes:
                    db.execute("DELETE FROM key_hashes WHERE digest = ?", (digest,))

        await self._run(write)

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
        self, key_id: str, amount: float, period: BudgetPeriod, budget: float | None, now: datetime
    ) -> tuple[bool, float]:
        buckets = spend_buckets(now)

        def write(db: sqlite3.Connection) -> tuple[bool, float]:
            # BEGIN IMMEDIATE takes the write lock first, so check and charge are one step
            # across every process using the file.
            with _transaction(db):
                row = db.execute(
                    "SELECT usd FROM key_spend WHERE key_id = ? AND bucket = ?",
                    (key_id, buckets[period]),
                ).fetchone()
                spent = row[0] if row else 0.0
                if budget is not None and spent >= budget:
                    return False, spent
                _add(db, key_id, amount, buckets.values())
                return True, spent

        return await self._run(write)

    async def add_spend(self, key_id: str, amount: float, now: datetime) -> None:
        buckets = spend_buckets(now)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                _add(db, key_id, amount, buckets.values())

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


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _add(db: sqlite3.Connection, key_id: str, amount: float, buckets: Iterable[str]) -> None:
    for bucket in buckets:
        db.execute(
            "INSERT INTO key_spend (key_id, bucket, usd) VALUES (?, ?, ?) "
            "ON CONFLICT(key_id, bucket) DO UPDATE SET usd = usd + excluded.usd",
            (key_id, bucket, amount),
        )
