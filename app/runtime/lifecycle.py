"""What a worker's signal handling (app/server/worker.py) and the app share: drain state and reload.

One `Lifecycle` per app, handed to the server through the lifespan state, so the HTTP protocol
and `/readyz` see the drain the moment SIGTERM arrives.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from typing import TypedDict

from app.runtime.reload import Reloaded, Reloader
from app.runtime.services import Services

log = logging.getLogger("app.lifecycle")

# Set by the multi-worker supervisor for its workers: where a reload asked of one worker goes
# so that every worker reloads.
SUPERVISOR_PID_ENV = "EMBEDDINGS_GATEWAY_SUPERVISOR_PID"


@dataclass
class Lifecycle:
    draining: bool = False  # SIGTERM or SIGINT arrived: /readyz is 503, responses close
    reloader: Reloader | None = None  # set once the gateway is built

    async def reload(self) -> Reloaded:
        """Reload this process; RegistryError if the new registry is refused."""
        assert self.reloader is not None  # requests are only served after start-up
        return await self.reloader.reload()

    async def reload_everywhere(self) -> Reloaded:
        """Reload this worker (so its caller gets the outcome), then have the supervisor
        send SIGHUP to every worker. The worker that answered reloads twice: harmless, as an
        unchanged registry keeps every route's health."""
        result = await self.reload()
        supervisor = os.environ.get(SUPERVISOR_PID_ENV)
        if supervisor and supervisor == str(os.getppid()):
            os.kill(int(supervisor), signal.SIGHUP)
        return result


class LifespanState(TypedDict):
    """What the lifespan hands every request (`scope["state"]`, Starlette's lifespan state): the
    one way the HTTP layer, the console and the server reach the running gateway."""

    services: Services
    lifecycle: Lifecycle
