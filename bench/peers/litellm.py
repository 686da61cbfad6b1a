"""LiteLLM's proxy as a peer: installed once into its own venv, started on the same fakes."""

from __future__ import annotations

import os
import secrets
import string
import sys
from pathlib import Path

from bench.procs import Managed, free_port, run_bounded
from bench.servers import http_ok
from bench.session import BENCH, UPSTREAM_KEY, Bench, Target, log

LITELLM_VENV = BENCH / ".venv-litellm"
CONFIG_TEMPLATE = Path(__file__).resolve().with_name("litellm_config.yaml")


def install(bench: Bench) -> Path:
    """LiteLLM's proxy in its own venv (bench/.venv-litellm), installed once."""
    spec = bench.args.litellm_spec
    binary = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / ".bench-installed"
    if binary.exists() and marker.exists() and marker.read_text().strip() == spec:
        return binary
    log(f"installing {spec} into {LITELLM_VENV} (once; a few minutes)...")
    python = LITELLM_VENV / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", spec],
    ]
    for number, argv in enumerate(steps):
        step = Managed(f"litellm-install-{number}", argv, log_path=bench.workdir / "pip.log")
        if run_bounded(step, timeout=bench.args.install_timeout) != 0:
            raise RuntimeError(f"installing LiteLLM failed:\n{step.log_tail()}")
    marker.write_text(spec + "\n")
    return binary


def start(bench: Bench) -> Target:
    binary = install(bench)
    template = string.Template(CONFIG_TEMPLATE.read_text())
    config = bench.workdir / "litellm_config.yaml"
    config.write_text(
        template.substitute(
            MAIN_URL=bench.main_url, FAULTY_URL=bench.faulty_url, UPSTREAM_KEY=UPSTREAM_KEY
        )
    )
    port = free_port()
    key = "sk-" + secrets.token_hex(24)  # LiteLLM refuses its well-known default key
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PYTHONPATH"}}
    env.update(
        {
            "LITELLM_MASTER_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start-up
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    proxy = Managed(
        "litellm",
        [
            str(binary),
            "--config", str(config),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--num_workers", "1",
        ],
        log_path=bench.workdir / "litellm.log",
        env=env,
        cwd=bench.workdir,
    ).start()  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    proxy.wait_ready(lambda: http_ok(url + "/health/liveliness"), timeout=180)
    return Target("litellm", url + "/v1/embeddings", [f"Authorization: Bearer {key}"], proxy)
