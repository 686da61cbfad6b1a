"""Turns of the event loop for the Batch API's synchronous work: given back by time, not by count.

A worker's event loop also serves interactive requests, so bulk work that runs without awaiting
(parsing lines, building output lines) gives the loop a turn every TURN_SECONDS. By time rather
than every so many lines: a turn costs ~10-20 µs, so a count small enough for the slowest lines
(thousands of inputs each) pays for thousands of needless turns on the usual small ones.
"""

from __future__ import annotations

import asyncio
import time

TURN_SECONDS = 0.001  # of synchronous work between two turns: an interactive request waits so long


class Turns:
    __slots__ = ("_every", "_next")

    def __init__(self, every: float = TURN_SECONDS) -> None:
        self._every = every
        self._next = time.perf_counter() + every

    def due(self) -> bool:
        return time.perf_counter() >= self._next

    async def give(self) -> None:
        """A turn of the event loop, whether due or not; the next one due `every` from now."""
        await asyncio.sleep(0)
        self._next = time.perf_counter() + self._every

    async def maybe(self) -> None:
        if time.perf_counter() >= self._next:
            await self.give()
