"""Figures kept in process and written to a shared store in batches, each exactly once, by a
background writer that cannot die.

- **One write in flight per process.** Every write (the background one, a shutdown's, one a
  request asks for) takes the same lock, so no two send the same batch or pop each other's.
- **Exactly once.** What is pending becomes batches, each with a random ID; the store applies a
  batch only if its ID is new. A batch whose outcome is unknown (a timeout, a lost answer) is
  sent again as it is, under the same ID, until the store answers. While batches wait to be
  resent no new ones are cut: new figures keep adding up in process, so what waits is bounded
  by the number of distinct rows (keys, models and days), not by the outage's length.
- **The writer cannot die.** Any error, expected (the store is down) or not (a bug), is logged,
  counted in `embeddings_gateway_batched_write_failures_total{ledger}`, shown by `health()` (on
  /readyz), and retried with exponential backoff up to `MAX_BACKOFF_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from app import metrics

log = logging.getLogger("app.usage")

MAX_BACKOFF_SECONDS = 30.0
B = TypeVar("B")


class StoreFailed(Exception):
    """The shared store did not take a batch (down, slow, locked); it is kept and resent."""


class BatchedWrites(ABC, Generic[B]):
    name = "batched"  # the metric's label and the health entry's name

    def __init__(self, *, interval: float = 1.0) -> None:
        self._interval = interval
        self._lock = asyncio.Lock()
        self._unsent: list[tuple[str, B]] = []
        self._wake: asyncio.Event | None = None
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._failures = 0

    # -- what a store implements ------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether there is a store to write to at all (else figures stay in process)."""
        return True

    @abstractmethod
    def _take(self) -> list[B]:
        """What is pending in process, as new batches (emptying it); [] when nothing is."""

    @abstractmethod
    async def _apply(self, batch_id: str, batch: B) -> None:
        """Apply `batch` once (a known `batch_id` is a no-op); raise StoreFailed if not sure."""

    # -- writing ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write everything pending now; StoreFailed (or a bug's error) if some is left."""
        if not self.shared:
            return
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._unsent:
            self._unsent = [(uuid.uuid4().hex, batch) for batch in self._take()]
        while self._unsent:
            batch_id, batch = self._unsent[0]
            await self._apply(batch_id, batch)
            self._unsent.pop(0)

    def wake(self) -> None:
        """Ask the background writer to write now rather than at its next tick."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Write every `interval` (or when woken) until cancelled; back off while failing."""
        self._wake = asyncio.Event()
        delay = self._interval
        while True:
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the writer must outlive any error
                self._failed(exc)
                delay = min(MAX_BACKOFF_SECONDS, max(self._interval, delay * 2))
            else:
                self._succeeded()
                delay = self._interval

    async def close(self) -> None:
        """Shutdown: one last write; what it cannot write is said, and lost with the process."""
        try:
            await self.flush()
        except Exception as exc:  # shutdown goes on whatever happens here
            log.warning(
                "%s: %d batch(es) not written at shutdown (%s)",
                self.name,
                len(self._unsent),
                type(exc).__name__,
            )

    # -- health -----------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        metrics.BATCHED_WRITE_FAILURES.labels(self.name).inc()
        self._failures += 1
        self._last_error = type(exc).__name__ if isinstance(exc, StoreFailed) else repr(exc)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if isinstance(exc, StoreFailed):
            log.warning("%s not written yet (%s); kept in process, retried", self.name, exc)
        else:  # a bug: say where, once per failing streak
            log.error("%s writer failed; retried", self.name, exc_info=self._failures == 1)

    def _succeeded(self) -> None:
        if self._failing_since is not None:
            log.info("%s written again after %d failed tries", self.name, self._failures)
        self._failing_since, self._last_error, self._failures = None, None, 0

    def health(self) -> dict[str, Any]:
        failing = self._failing_since
        return {
            "ok": failing is None,
            "failing_for_seconds": round(time.monotonic() - failing, 1) if failing else 0.0,
            "last_error": self._last_error,
            "unsent_batches": len(self._unsent),
        }
