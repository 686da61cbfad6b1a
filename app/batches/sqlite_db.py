"""A SQLite file shared by every worker process on the machine, for the batch store without
Redis (app/batches/sqlite_store.py): its schema, run by the same runner as KEYS_DB and usage.db
(app/state/sqlite_db.py says why the stdlib `sqlite3` on one thread per process, WAL and
bounded waits).

`synchronous=FULL`: a write that returned survives a power cut, not only a crash of the process.
The file is created on first write, not at start-up: a gateway that never batches has none, and
until then reads answer as an empty store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from app.batches.store import StoreUnavailable
from app.state.sqlite_db import NoFile, SQLiteBusy, SQLiteDB

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS batch_files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_files_by_owner ON batch_files (owner, created_at, id);
CREATE INDEX IF NOT EXISTS batch_files_by_expiry ON batch_files (expires_at);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    enqueued INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    upstream_tokens INTEGER NOT NULL DEFAULT 0,
    spend_usd REAL NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_by_owner ON batches (owner, created_at, id);
CREATE INDEX IF NOT EXISTS batches_by_created ON batches (created_at, id);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
CREATE TABLE IF NOT EXISTS batch_chunks (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    plan TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    worker TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    queued_at REAL NOT NULL,
    outcome TEXT,
    PRIMARY KEY (batch_id, idx)
);
CREATE INDEX IF NOT EXISTS batch_chunks_queue ON batch_chunks (state, queued_at, batch_id, idx);
"""


class SQLiteFile:
    """BATCH_DB through the gateway's one SQLite runner (app/state/sqlite_db.py: its thread,
    WAL and bounded waits), with `synchronous=FULL` and its failures as the batch store's."""

    def __init__(self, path: str | Path, *, timeout: float) -> None:
        self._db = SQLiteDB(path, SCHEMA, timeout=timeout, synchronous="FULL")

    async def run(self, work: Callable[[sqlite3.Connection], T], *, create: bool = True) -> T:
        """`work` on the store's thread; with `create=False` and no file yet, NoFile (`read`
        answers as an empty store then)."""
        try:
            return await self._db.run(work, create=create)
        except SQLiteBusy as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def read(self, work: Callable[[sqlite3.Connection], T], empty: T) -> T:
        try:
            return await self.run(work, create=False)
        except NoFile:
            return empty

    async def aclose(self) -> None:
        await self._db.aclose()
