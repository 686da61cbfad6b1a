"""A SQLite file shared by every worker process on the machine, for the batch store without
Redis (app/batches/sqlite_store.py): as KEYS_DB is (app/keys/sqlite_store.py says why the stdlib
`sqlite3` on one thread per process, WAL and `busy_timeout`).

`synchronous=FULL`: a write that returned survives a power cut, not only a crash of the process.
The file is created on first write, not at start-up: a gateway that never batches has none, and
until then reads answer as an empty store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from app.batches.store import StoreUnavailable

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

BUSY_TIMEOUT_MS = 10_000


class SQLiteFile:
    """The file, opened on the store's own thread on first use."""

    def __init__(self, path: str | Path, *, timeout: float) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._db is None:
            if not create and not self.path.exists():
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    async def run(self, work: Callable[[sqlite3.Connection], T], *, create: bool = True) -> T:
        """`work` on the store's thread; with `create=False` and no file yet, NoFile (`read`
        answers as an empty store then)."""

        def call() -> T:
            try:
                db = self._connect(create)
                if db is None:
                    raise NoFile()
                return work(db)
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"SQLite: {exc}") from exc

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            raise StoreUnavailable("SQLite: timed out") from None

    async def read(self, work: Callable[[sqlite3.Connection], T], empty: T) -> T:
        try:
            return await self.run(work, create=False)
        except NoFile:
            return empty

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


class NoFile(Exception):
    """BATCH_DB does not exist yet: nothing was ever stored."""


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock first, so a read-then-write is one step across every
    process using the file) … COMMIT, or ROLLBACK on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
