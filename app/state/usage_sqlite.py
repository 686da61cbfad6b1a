"""Usage in a SQLite file, for a gateway without Redis: every worker on the machine shares it.

The file sits beside KEYS_DB (`usage.db` in the same directory), in WAL mode. A batch is one
transaction that first records its ID in `usage_batches`: a batch sent again (its answer lost
to a timeout) finds its ID there and adds nothing, so each applies exactly once, as in Redis.
Batch IDs older than `BATCH_ID_TTL_SECONDS` and rows older than `RETENTION_DAYS` are dropped
by the writer's upkeep.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from app.state.batched_writes import StoreFailed
from app.state.sqlite_db import SQLiteBusy, SQLiteDB, transaction
from app.state.usage_ledger import (
    BATCH_ID_TTL_SECONDS,
    FIGURES,
    RETENTION_DAYS,
    Batch,
    Row,
    sane,
    today,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    upstream_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, model)
);
CREATE TABLE IF NOT EXISTS usage_batches (
    id TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
);
"""
_COLUMNS = ", ".join(FIGURES)
_UPSERT = (
    f"INSERT INTO usage (day, key_id, model, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (day, key_id, model) DO UPDATE SET "
    + ", ".join(f"{f} = MIN({f} + excluded.{f}, {2**53})" for f in FIGURES)
)


def usage_path(keys_db: str | Path) -> Path:
    """Where usage is kept without Redis: beside the managed keys' file."""
    return Path(keys_db).parent / "usage.db"


class SQLiteUsageBooks:
    def __init__(self, path: str | Path, *, timeout: float) -> None:
        self._db = SQLiteDB(path, SCHEMA, timeout=timeout)
        self.description = f"SQLite file {path}"

    async def start(self) -> None:
        """OSError when the file's directory cannot be made or written (a read-only disk)."""
        directory = self._db.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(f"{directory} is not writable")

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run(work)
        except SQLiteBusy as exc:
            raise StoreFailed(f"SQLite: {exc}") from None

    def split(self, batch: Batch) -> list[Batch]:
        return [batch]

    async def apply(self, batch_id: str, batch: Batch) -> None:
        rows = []
        for (day, key, model), figures in batch.items():
            amounts = [sane(f, figures.get(f, 0)) or 0 for f in FIGURES]
            if any(amounts):
                rows.append((day, key, model, *amounts))

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                try:
                    db.execute(
                        "INSERT INTO usage_batches (id, applied_at) VALUES (?, ?)",
                        (batch_id, time.time()),
                    )
                except sqlite3.IntegrityError:
                    return  # applied before: its answer was lost, not its work
                db.executemany(_UPSERT, rows)

        await self._run(write)

    async def read(
        self, days: list[str], key_id: str | None, timeout: float
    ) -> list[tuple[Row, dict[str, float]]]:
        query = f"SELECT day, key_id, model, {_COLUMNS} FROM usage WHERE day BETWEEN ? AND ?"
        params: tuple[str, ...] = (days[0], days[-1])
        if key_id is not None:
            query += " AND key_id = ?"
            params += (key_id,)

        def read(db: sqlite3.Connection) -> list[tuple[Row, dict[str, float]]]:
            return [
                ((str(day), str(key), str(model)), dict(zip(FIGURES, values, strict=True)))
                for day, key, model, *values in db.execute(query, params).fetchall()
            ]

        return await self._run(read)

    async def maintain(self) -> None:
        oldest = (today() - timedelta(days=RETENTION_DAYS)).isoformat()

        def prune(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "DELETE FROM usage_batches WHERE applied_at < ?",
                    (time.time() - BATCH_ID_TTL_SECONDS,),
                )
                db.execute("DELETE FROM usage WHERE day < ?", (oldest,))

        await self._run(prune)

    async def aclose(self) -> None:
        await self._db.aclose()
