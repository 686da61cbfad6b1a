"""Summaries of py-spy's collapsed stacks (`py-spy record --format raw --nolineno`).

Each line of the input is `frame;frame;...;leaf COUNT`, outermost first, each frame
`function (path)`. "self" charges a sample to its leaf frame (where the CPU was), "inclusive"
to every distinct package on the stack, and "by deepest gateway frame" to the innermost app/
function on it -- the most direct answer to "which part of the gateway costs what".
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*)\)$")
# The gateway's own code (its entry point, app/cli.py, is on every stack: not informative).
_APP = re.compile(r"^app/(?!cli\.py$)")


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _path(frame: str) -> str:
    match = _FRAME.match(frame)
    return match.group("path") if match else frame


def package(frame: str) -> str:
    """Where a frame's code lives: `app.<module>`, else the first part of its path (py-spy
    prints paths relative to sys.path: `httpx/_models.py`, `asyncio/tasks.py`, `uuid.py`)."""
    path = _path(frame)
    if path.startswith("app/"):
        return path.removesuffix(".py").replace("/", ".")
    return path.split("/")[0].removesuffix(".py") or frame


def short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match.group('func')} ({package(frame)})"


def owner(frames: list[str]) -> str:
    """The deepest gateway frame on the stack: the gateway code that spent (or caused) the
    sample, with the library code it called; else the outermost frame under the event loop."""
    for frame in reversed(frames):
        if _APP.match(_path(frame)):
            return short(frame)
    for index, frame in enumerate(frames):
        if frame.startswith("Runner.run ") and index + 1 < len(frames):
            return "(no gateway frame) " + short(frames[index + 1])
    return "(event loop itself)"


def summarize(text: str, top: int = 25) -> str:
    stacks = parse(text.splitlines())
    # py-spy starts each stack with the thread ("thread (0x7f..)" / "process N:..."): drop it.
    stacks = [([f for f in fs if _FRAME.match(f) and "(0x" not in f], n) for fs, n in stacks]
    total = sum(n for _, n in stacks)
    if not total:
        return "no samples (was the process busy? is py-spy allowed to attach?)"
    by_owner: Counter[str] = Counter()
    self_frames: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    inclusive_pkg: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        by_owner[owner(frames)] += n
        self_frames[short(frames[-1])] += n
        self_pkg[package(frames[-1])] += n
        for name in {package(f) for f in frames}:
            inclusive_pkg[name] += n

    def block(title: str, counts: Counter[str], limit: int) -> list[str]:
        lines = [title]
        for name, n in counts.most_common(limit):
            lines.append(f"  {100 * n / total:5.1f}%  {name}")
        return lines

    out = [f"{total} samples"]
    out += block(
        "by deepest gateway frame (its own code plus the libraries it calls):", by_owner, top
    )
    out += block("self time by package (where the CPU was):", self_pkg, 15)
    out += block("inclusive time by package (what it was spent under):", inclusive_pkg, 25)
    out += block("self time by function:", self_frames, top)
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]).read_text()))
