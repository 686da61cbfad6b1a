"""One SQLite file shared by every worker on a machine, with every wait bounded.

WAL mode lets readers run while one process writes. A writer waits for the file's write lock
at most `timeout` seconds (SQLite's busy timeout), and so does a call queued behind another on
this process's one database thread: a call that waited its whole bound in the queue is not
run at all, and the caller gets `SQLiteBusy` at the bound, never seconds later. So a file held
locked by another process (a backup, a stuck CLI) costs a request `timeout`, not a pile-up.

The stdlib `sqlite3` runs on one dedicated thread per file and process: the calls are few and
short, and `aiosqlite` would do exactly this (a thread per connection) as one more dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 1.0


class SQLiteBusy(Exception):
    """The file did not answer within the bound (locked by another process, or unusable)."""


class NoFile(Exception):
    """`run(..., create=False)` on a file that does not exist yet."""


class SQLiteDB:
    def __init__(
        self,
        path: str | Path,
        schema: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._schema = schema
        # NORMAL: a write that returned survives a crash of the process; FULL: a power cut too.
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    def _connect(self, budget_ms: int, create: bool) -> sqlite3.Connection:
        if self._db is None:
            if not create and not self.path.exists():
                raise NoFile(str(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=budget_ms / 1000, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(self._schema)
            self._db = db
        return self._db

    async def run(self, work: Callable[[sqlite3.Connection], T], *, create: bool = True) -> T:
        """`work(connection)` on the database thread, within `timeout` from now, queue included;
        with `create=False`, NoFile if the file does not exist yet (nothing is created)."""
        deadline = time.monotonic() + self.timeout

        def call() -> T:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise SQLiteBusy("waited its whole bound behind other calls")
            try:
                db = self._connect(left_ms, create)
                db.execute(f"PRAGMA busy_timeout = {left_ms}")
                return work(db)
            except sqlite3.OperationalError as exc:
                raise SQLiteBusy(str(exc)) from exc
            except (sqlite3.Error, OSError) as exc:
                raise SQLiteBusy(str(exc)) from exc

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            # The thread bounds itself; this bounds the wait for a call stuck in SQLite's own
            # code past its busy timeout (a slow disk), with a little room for the handoff.
            async with asyncio.timeout(self.timeout + 0.25):
                return await asyncio.shield(future)
        except TimeoutError:
            raise SQLiteBusy("no answer within the bound") from None

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._db is not None:
            with contextlib.suppress(RuntimeError):  # the executor is shut down already
                await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)


class transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error: one atomic step across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
