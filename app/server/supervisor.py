"""The supervisor of several workers (`WORKERS` > 1), uvicorn's own with the gateway's signals.

uvicorn's multi-worker supervisor answers SIGHUP by replacing every worker, losing route health
and refusing nothing (an invalid registry only shows as a worker that fails to start). Ours
forwards SIGTERM, SIGINT and SIGHUP to every worker at once (each drains or reloads itself,
app/server/worker.py), closes its own copy of the listening socket (the workers hold theirs),
and waits for the workers at most delay + grace + a margin before killing what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from socket import socket
from types import FrameType

from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process
from uvicorn.supervisors.multiprocess import logger as supervisor_log

from app.runtime.lifecycle import SUPERVISOR_PID_ENV
from app.server.worker import GatewayServer

# After delay + grace, what the lifespan shutdown (usage flush, closing clients) may still take
# before the supervisor kills a worker.
FLUSH_MARGIN_SECONDS = 5.0


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
