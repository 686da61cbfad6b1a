"""Run real gateways for tests: in a thread (fast, any settings) or as the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from app.config.settings import Settings
from app.main import create_app
from app.server.protocol import protocol_class

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_registry(path: Path, providers: dict[str, Any], models: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"providers": providers, "models": models}, sort_keys=False))
    return path


def model_entry(
    routes: list[dict[str, Any]],
    *,
    dimensions: int = 16,
    supports_dimensions: bool = False,
    max_tokens: int = 8191,
    price: float = 0.02,
) -> dict[str, Any]:
    return {
        "name": "Test model",
        "description": "A model served by a fake upstream",
        "owned_by": "tests",
        "dimensions": dimensions,
        "supports_dimensions": supports_dimensions,
        "max_tokens": max_tokens,
        "pricing": {"per_million_tokens": price},
        "routes": routes,
    }


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:  # a zombie is dead: only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def scratch_keys_db() -> str:
    """A KEYS_DB in a fresh directory: without Redis a gateway keeps usage in a SQLite file
    beside KEYS_DB, and a test must not read what an earlier run left in ./data."""
    return str(Path(tempfile.mkdtemp(prefix="gateway-data-")) / "keys.db")


class ThreadedGateway:
    """The real ASGI app behind a real uvicorn server on 127.0.0.1, in a background thread.
    `wall_clock`: the Batch API's clock (timestamps, completion windows), for tests that move
    time instead of sleeping."""

    def __init__(self, *, wall_clock: Callable[[], float] = time.time, **settings: Any) -> None:
        self.port = free_port()
        settings.setdefault("KEYS_DB", scratch_keys_db())
        self.settings = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
        config = uvicorn.Config(
            create_app(self.settings, wall_clock=wall_clock),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            proxy_headers=False,
            lifespan="on",
            # The CLI's protocol and limits, so tests exercise what production runs.
            http=protocol_class(self.settings),
            timeout_keep_alive=self.settings.KEEPALIVE_TIMEOUT_SECONDS,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedGateway:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ThreadedGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess:
    """`embeddings-gateway` exactly as a user starts it, configured only through the env."""

    def __init__(self, env: dict[str, str], *, cwd: Path = ROOT) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.env = {**os.environ, "HOST": "127.0.0.1", **env, "PORT": str(self.port)}
        self.env.setdefault("KEYS_DB", scratch_keys_db())
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> GatewayProcess:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli"],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code < 500:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        output = self.output()
        self.stop()  # a gateway that never answered must not outlive the test (or the suite)
        raise RuntimeError(f"gateway did not start: {output}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGINT, as Ctrl-C: SIGTERM would keep serving for SHUTDOWN_DELAY_SECONDS first.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once, as an OOM kill or a lost node would:
        no shutdown, no last flush."""
        assert self.process is not None
        pids = [self.process.pid, *_descendants(self.process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        for pid in pids[1:]:  # workers are not our children: wait until they are gone
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> GatewayProcess:
        if self.process is not None and self.process.poll() is None:
            return self  # started already (`with started(GatewayProcess(...))`): one process
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
