"""A throwaway `redis-server` on 127.0.0.1 for tests: no persistence, stoppable and restartable
on the same port (for outage tests)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.harness import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    return Path(REDIS_SERVER).is_file()


class RedisServer:
    """`args` are more command-line options (`--cluster-enabled yes`, `--replicaof ...`);
    `config` is a config file's text, given first (Sentinel needs a file it can rewrite)."""

    def __init__(
        self, port: int | None = None, *, args: tuple[str, ...] = (), config: str | None = None
    ) -> None:
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self.process: subprocess.Popen[bytes] | None = None
        self._args = args
        self._config = config

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout: float = 10) -> RedisServer:
        if self.running:
            return self
        log = Path(self._dir.name) / "redis.log"
        conf: list[str] = []
        if self._config is not None:
            path = Path(self._dir.name) / "redis.conf"
            if not path.exists():  # a restart keeps what the server rewrote (Sentinel's state)
                path.write_text(self._config)
            conf = [str(path)]
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *conf,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(log),
                "--daemonize", "no",
                *self._args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        with self.client() as probe:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')}")
                try:
                    probe.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Gone at once, as in a crash: no shutdown, no goodbye to its replicas."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
