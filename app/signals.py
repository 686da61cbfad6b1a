"""What the gateway's processes do on SIGTERM, SIGINT and SIGHUP (README, "Graceful shutdown"
and "Reload").

uvicorn stops accepting the moment it gets SIGTERM, so connections a load balancer still sends
sit unaccepted in the listen queue and are reset when the process exits; and its multi-worker
supervisor answers SIGHUP by replacing every worker, losing route health and refusing nothing
(an invalid registry only shows as a worker that fails to start). Hence:

- `GatewayServer` (each worker, or the only process): SIGTERM marks the app draining (`/readyz`
  503, responses carry `connection: close`), goes on serving for `SHUTDOWN_DELAY_SECONDS`, then
  runs uvicorn's own shutdown: stop accepting, let accepted requests finish within
  `timeout_graceful_shutdown` (`SHUTDOWN_GRACE_SECONDS`), then the lifespan flushes and closes.
  SIGINT does the same without the delay. SIGHUP reloads the registry in-process.
- `GatewaySupervisor` (`WORKERS` > 1): forwards each of those signals to every worker at once,
  closes its own copy of the listening socket (the workers hold theirs), and waits for the
  workers at most delay + grace + a margin before killing what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from socket import socket
from types import FrameType

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process
from uvicorn.supervisors.multiprocess import logger as supervisor_log

from app.lifecycle import SUPERVISOR_PID_ENV, Lifecycle
from app.registry import RegistryError

log = logging.getLogger("app.lifecycle")  # the workers' (the supervisor logs as uvicorn's)

# After delay + grace, what the lifespan shutdown (usage flush, closing clients) may still take
# before the supervisor kills a worker.
FLUSH_MARGIN_SECONDS = 5.0


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


class GatewayWorker(Process):
    """uvicorn's worker process, running a `GatewayServer`."""

    def __init__(self, config: Config, sockets: list[socket], *, shutdown_delay: float) -> None:
        self.shutdown_delay = shutdown_delay
        super().__init__(config, sockets)

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = GatewayServer(self.config, shutdown_delay=self.shutdown_delay)
        return self._server


class GatewaySupervisor(Multiprocess):
    _FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, config: Config, sockets: list[socket], *, shutdown_delay: float) -> None:
        super().__init__(config, sockets)
        self.shutdown_delay = shutdown_delay
        self._stopping = False
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # inherited by the workers
        for sig in self._FORWARDED:
            signal.signal(sig, self._on_signal)

    def _spawn(self) -> Process:
        worker = GatewayWorker(self.config, self.sockets, shutdown_delay=self.shutdown_delay)
        worker.start()
        return worker

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Forwarded from the handler itself, not from the 0.5 s polling loop: /readyz must turn
        # 503 at once. The rest (stopping this loop) happens in handle_signals.
        self._forward(sig)
        if sig != signal.SIGHUP and not self._stopping:
            self._stopping = True
            self.should_exit.set()  # before a dead worker could be replaced on a closed socket
            for sock in self.sockets:
                sock.close()  # the workers keep accepting on their own copies until they stop
        self.signal_queue.append(sig)

    def _forward(self, sig: int) -> None:
        for process in list(self.processes):
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)

    # --- uvicorn's hooks -----------------------------------------------------------------------

    def init_processes(self) -> None:
        self.processes = [self._spawn() for _ in range(self.processes_num)]

    def handle_hup(self) -> None:
        supervisor_log.info("SIGHUP: every worker reloads the registry")

    def handle_ttin(self) -> None:
        self.processes_num += 1
        self.processes.append(self._spawn())

    def terminate_all(self) -> None:
        supervisor_log.info("stopping: waiting for the workers to drain")
        if not self._stopping:  # stopping for another reason (a worker failed to start)
            self._stopping = True
            self._forward(signal.SIGTERM)

    def join_all(self) -> None:
        grace = self.config.timeout_graceful_shutdown or 0
        deadline = time.monotonic() + self.shutdown_delay + grace + FLUSH_MARGIN_SECONDS
        for process in self.processes:
            process.process.join(max(0.0, deadline - time.monotonic()))
            if process.process.is_alive():
                supervisor_log.error("worker [%s] did not stop in time; killing it", process.pid)
                process.kill()
                process.process.join()

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                supervisor_log.error("worker [%s] failed to start; stopping", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            supervisor_log.info("worker [%s] died; starting another", process.pid)
            self.processes[index] = self._spawn()
