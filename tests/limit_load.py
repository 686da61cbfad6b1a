"""Open-loop load over a per-IP limit, for the cross-worker accuracy tests: requests sent at a
fixed rate for a fixed time (bounded in both), every status and latency kept."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx


@dataclass
class Offered:
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0  # how long requests were sent for

    def stretch(self, limit: int) -> float:
        """How many more an exact limit admits when the gateway stamps requests as it handles
        them, not as they were sent: a busy machine's varying delay stretches the window it
        sees by up to the spread of latencies. A count per process admits several times over."""
        return limit * (max(self.latencies) - min(self.latencies))


async def offer(url: str, rate: float, seconds: float, internal_token: str) -> Offered:
    """`rate` requests a second to GET /api/v1/models for `seconds`, after one warm-up request
    per connection (with the internal token, so it is not counted) and a second for the
    window to empty."""
    offered = Offered()
    # Few connections: httpx's pool costs grow with their number, and at 64 the client itself
    # could no longer offer 250 requests/s on a 2-CPU machine.
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(
        base_url=url, timeout=5, limits=httpx.Limits(max_connections=16)
    ) as client:
        internal = {"authorization": f"Bearer {internal_token}"}
        await asyncio.gather(*(client.get("/v1/models", headers=internal) for _ in range(16)))
        await asyncio.sleep(1.1)  # the start-up probe's hit leaves the window

        loop = asyncio.get_running_loop()

        async def one() -> None:
            sent = loop.time()
            try:
                response = await client.get("/api/v1/models")
                offered.statuses.append(response.status_code)
                offered.latencies.append(loop.time() - sent)
            finally:
                gate.release()

        tasks = []
        async with asyncio.timeout(seconds + 10):
            started = loop.time()
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
                await gate.acquire()
                if loop.time() - started >= seconds:
                    gate.release()
                    break  # a busy machine sends fewer, never for longer than the window
                tasks.append(asyncio.create_task(one()))
            offered.seconds = loop.time() - started
            await asyncio.gather(*tasks)
    return offered
