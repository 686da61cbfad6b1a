"""Each worker's server (or the only process's): what it does on SIGTERM, SIGINT and SIGHUP
(docs/operations.md, "Graceful shutdown" and "Reload").

uvicorn stops accepting the moment it gets SIGTERM, so connections a load balancer still sends
sit unaccepted in the listen queue and are reset when the process exits. Hence `GatewayServer`:
SIGTERM marks the app draining (`/readyz` 503, responses carry `connection: close`), goes on
serving for `SHUTDOWN_DELAY_SECONDS`, then runs uvicorn's own shutdown: stop accepting, let
accepted requests finish within `timeout_graceful_shutdown` (`SHUTDOWN_GRACE_SECONDS`), then
the lifespan flushes and closes. SIGINT does the same without the delay. SIGHUP reloads the
registry in-process. The supervisor of several workers is app/server/supervisor.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from socket import socket
from types import FrameType

from uvicorn import Config, Server

from app.config.registry import RegistryError
from app.runtime.lifecycle import Lifecycle

log = logging.getLogger("app.lifecycle")  # the workers' (the supervisor logs as uvicorn's)


class GatewayServer(Server):
    def __init__(self, config: Config, *, shutdown_delay: float) -> None:
        super().__init__(config)
        self.shutdown_delay = shutdown_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_at: float | None = None
        self._stop_timer: asyncio.TimerHandle | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    async def serve(self, sockets: list[socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(signal.SIGHUP, self._handle_hup)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def _lifecycle(self) -> Lifecycle | None:
        lifespan = getattr(self, "lifespan", None)
        state = getattr(lifespan, "state", None) or {}
        found = state.get("lifecycle")
        return found if isinstance(found, Lifecycle) else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started or self._loop is None or self._lifecycle() is None:
            super().handle_exit(sig, frame)  # still starting: nothing to drain
            return
        if not self._captured_signals:
            self._captured_signals.append(sig)  # re-raised at exit, as uvicorn does
        delay = 0.0 if sig == signal.SIGINT else self.shutdown_delay
        self._loop.call_soon_threadsafe(self._drain, signal.Signals(sig).name, delay)

    def _drain(self, name: str, delay: float) -> None:
        lifecycle = self._lifecycle()
        assert lifecycle is not None and self._loop is not None
        lifecycle.draining = True
        stop_at = self._loop.time() + delay
        if self._stop_at is not None and self._stop_at <= stop_at:
            return  # already stopping as soon or sooner
        self._stop_at = stop_at
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self._stop_timer = self._loop.call_at(stop_at, self._stop_accepting)
        log.info(
            "%s: draining; /readyz answers 503, new requests are served for %gs more, then "
            "accepted ones get %gs to finish",
            name,
            delay,
            self.config.timeout_graceful_shutdown or 0,
        )

    def _stop_accepting(self) -> None:
        self.should_exit = True  # uvicorn's shutdown: close listeners, finish, lifespan

    def _handle_hup(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_reload)

    def _start_reload(self) -> None:
        lifecycle = self._lifecycle()
        if lifecycle is None or lifecycle.reloader is None:
            log.warning("SIGHUP before start-up finished: nothing to reload")
            return
        task = asyncio.ensure_future(self._reload(lifecycle))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self, lifecycle: Lifecycle) -> None:
        try:
            await lifecycle.reload()
        except RegistryError:
            pass  # logged by the reloader, with the same line check-config prints
        except Exception:
            log.exception("reload failed; still serving the previous registry")
