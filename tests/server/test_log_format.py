"""One log format: uvicorn's own lines come out in the gateway's format, from the real CLI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import NANOGPT_KEY
from tests.fakes import FakeUpstream
from tests.harness import ROOT, GatewayProcess, free_port, model_entry, write_registry

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


@pytest.fixture
def registry(tmp_path: Path, nanogpt: FakeUpstream) -> Path:
    providers = {
        "nanogpt": {"type": "nanogpt", "base_url": nanogpt.base_url, "api_key": NANOGPT_KEY}
    }
    models = {"m": model_entry([{"provider": "nanogpt", "model": "m"}])}
    return write_registry(tmp_path / "models.yaml", providers, models)


def json_lines(output: str) -> list[dict]:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "the gateway wrote nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- whole output ---\n{output}")
    return parsed


@pytest.fixture
def served_output(registry: Path) -> Iterator[str]:
    env = {"MODELS_CONFIG": str(registry), "WORKERS": "2", "LOG_FORMAT": "json"}
    process = GatewayProcess(env)
    with process:
        assert httpx.get(f"{process.url}/v1/models", timeout=10).status_code == 200
    yield process.output()


def test_every_line_a_two_worker_gateway_writes_is_json(served_output: str) -> None:
    lines = json_lines(served_output)
    uvicorn = [line for line in lines if line["logger"].startswith("uvicorn")]
    messages = [line["message"] for line in uvicorn]
    # The supervisor's lines (it never imports the app) and each worker's.
    assert any(m.startswith("Started parent process") for m in messages), messages
    assert messages.count("Application startup complete.") == 2, messages
    assert any(m.startswith("Stopping parent process") for m in messages), messages
    assert {"time", "level", "logger", "pid", "message"} <= set(uvicorn[0])
    # uvicorn's colour copy of each message is not a field, and no ANSI escape gets through.
    assert not any("color_message" in line for line in uvicorn)
    assert "\x1b[" not in served_output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_already_in_use_is_reported_in_the_log_format(registry: Path, workers: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        json_run, text_run = (
            subprocess.run(
                [sys.executable, "-m", "app.cli"],
                env={
                    **os.environ,
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "MODELS_CONFIG": str(registry),
                    "WORKERS": workers,
                    "LOG_FORMAT": fmt,
                },
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for fmt in ("json", "text")
        )
    assert json_run.returncode != 0
    errors = [
        line for line in json_lines(json_run.stdout + json_run.stderr) if line["level"] == "ERROR"
    ]
    assert any("address already in use" in line["message"].lower() for line in errors), errors

    assert text_run.returncode != 0
    text = [line for line in (text_run.stdout + text_run.stderr).splitlines() if line.strip()]
    assert all(TEXT_LINE.match(line) for line in text), text
    assert any(" ERROR uvicorn.error: " in line and "in use" in line for line in text), text
