"""One registry's worth of serving state: the registry, its providers, their router and embedder.

A reload builds a new `Serving` and swaps the gateway's one reference to it. A request takes the
snapshot once, when it starts (`in_use`), and finishes on it whatever is swapped meanwhile; the
old snapshot closes its providers' HTTP sessions only once its last request is done.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app.config.registry import Registry
from app.core.embedder import Embedder
from app.core.routing.router import Router
from app.providers import Provider
from app.state.cache import EmbeddingCache

log = logging.getLogger("app.reload")


@dataclass(eq=False)
class Serving:
    registry: Registry
    providers: dict[str, Provider]
    router: Router
    cache: EmbeddingCache | None
    embedder: Embedder = field(init=False)
    _users: int = field(default=0, init=False)
    _idle: asyncio.Event | None = field(default=None, init=False)  # made only when retiring

    def __post_init__(self) -> None:
        self.embedder = Embedder(self.router, self.cache)

    def in_use(self) -> Serving:
        """`with serving.in_use():` for the length of a request. On the hot path: a counter,
        no event, until the snapshot is retired."""
        return self

    def __enter__(self) -> Serving:
        self._users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._users -= 1
        if self._users == 0 and self._idle is not None:
            self._idle.set()

    async def retire(self, longest_request: float) -> None:
        """Close the providers once no request uses this snapshot (or, should one hang, once
        the longest a request may run has passed: its upstream calls have timed out by then)."""
        if self._users:
            self._idle = asyncio.Event()
            try:
                async with asyncio.timeout(longest_request):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("closing old providers with %d requests still on them", self._users)
        await self.aclose()

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
