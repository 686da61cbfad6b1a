"""Child processes for the benchmark, and what /proc says about them.

Every child runs in its own session (so its process group holds whatever it forks: uvicorn
workers, LiteLLM's helpers) and is registered here the moment it starts, so `stop_all()` in a
`finally` ends every one of them, on success, on error and on Ctrl-C alike; should the
benchmark itself be killed outright, each child gets SIGTERM from the kernel (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_LIVE: list[Managed] = []


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark dies, even by SIGKILL (a
    `finally` never runs then), so no server outlives it. Linux only; best effort."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Managed:
    """One child process in its own process group, with stdout and stderr in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Managed:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: killpg reaches its children too
                preexec_fn=_die_with_parent,  # safe here: this process starts no threads
            )
        _LIVE.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, limit: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll `ready` until it is true; fail with the log's tail if the child dies or stalls."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        # The leader may be gone while something it forked lingers in the group.
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    """Stop every child still registered, newest first (clients before their servers)."""
    for child in reversed(list(_LIVE)):
        with contextlib.suppress(Exception):
            child.stop()


def run_bounded(
    child: Managed, timeout: float, tick: Callable[[], None] | None = None, every: float = 0.2
) -> int:
    """Start `child`, call `tick` every `every` seconds while it runs, kill it after `timeout`."""
    child.start()
    assert child.proc is not None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return child.proc.wait(timeout=every)
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{child.name} still running after {timeout:g}s:\n{child.log_tail()}"
                    ) from None
    finally:
        child.stop()


# ---------------------------------------------------------------------------------------------
# /proc: CPU time and memory of a process and everything it forked
# ---------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants (found through each process's parent id)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(_stat_fields(int(entry))[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """utime + stime (all threads) of `root`'s process tree, in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return ticks / CLK_TCK


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(root: int) -> float:
    """Resident memory of `root`'s process tree now (VmRSS summed), in MiB."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError):
            total += _status_kb(pid, "VmRSS")
    return total / 1024


def peak_rss_mb(root: int) -> float:
    """Peak resident memory (VmHWM summed over the tree) since start or `reset_peak_rss`."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError):
            total += _status_kb(pid, "VmHWM")
    return total / 1024


def reset_peak_rss(root: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, our own children); False if refused."""
    ok = True
    for pid in tree_pids(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok
