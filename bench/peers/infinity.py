"""Infinity (michaelfeil/infinity, PyPI `infinity-emb`) as a peer for the local scenario.

Installed once into its own venv (bench/.peers/infinity/.venv, ~1.4 GB; a `.venv` directory,
which the repository's checks of imports skip): its ONNX engine needs
optimum, which imports torch, so torch comes first, as the CPU build (`torch==2.13.0`; a plain
`torch` would pull a CUDA build of several GB). It serves the same sentence-transformers
directory as the gateway (bench/local.py) on the same machine's cores, with what it takes to
compute the same vectors (docs/local-models.md, "Measured"): started inside the directory
with `--model-id .` (optimum 2 finds only a root model.onnx, by its bare name), mean pooling
asked for (its default is CLS, whatever 1_Pooling says), truncation at 256 through config.json
(it truncates at max_position_embeddings), no optimisation pass, token counts by tokenising,
and offline, with its telemetry off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.procs import Managed, free_port, run_bounded
from bench.servers import http_ok
from bench.session import BENCH, Bench, Target, log

VENV = BENCH / ".peers" / "infinity" / ".venv"
TORCH = "torch==2.13.0"
SPEC = "infinity-emb[optimum,server]==0.0.78"


def install(bench: Bench) -> Path:
    binary = VENV / "bin" / "infinity_emb"
    marker = VENV / ".bench-installed"
    wanted = f"{TORCH} {SPEC}"
    if binary.exists() and marker.exists() and marker.read_text().strip() == wanted:
        return binary
    log(f"installing {SPEC} (with {TORCH}) into {VENV} (once; a few minutes)...")
    python = VENV / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", TORCH],
        [str(python), "-m", "pip", "install", "-q", SPEC],
    ]
    for number, argv in enumerate(steps):
        step = Managed(f"infinity-install-{number}", argv, log_path=bench.workdir / "pip.log")
        if run_bounded(step, timeout=bench.args.install_timeout) != 0:
            raise RuntimeError(f"installing Infinity failed:\n{step.log_tail()}")
    marker.write_text(wanted + "\n")
    return binary


def start(bench: Bench) -> Target:
    if bench.local_model_dir is None:
        raise RuntimeError(
            f"Infinity serves the local model, which cannot run here: {bench.local_model_problem}"
        )
    binary = install(bench)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        {
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(bench.workdir / "infinity-hf-home"),
        }
    )
    server = Managed(
        "infinity",
        [
            str(binary), "v2",
            "--model-id", ".",
            "--served-model-name", "bench-local",
            "--engine", "optimum",
            "--device", "cpu",
            "--pooling-method", "mean",
            "--onnx-disable-optimize",
            "--lengths-via-tokenize",
            "--host", "127.0.0.1",
            "--port", str(port),
        ],
        log_path=bench.workdir / "infinity.log",
        env=env,
        cwd=bench.local_model_dir,
    ).start()  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(lambda: http_ok(url + "/health"), timeout=300)
    return Target("infinity", url + "/embeddings", [], server, only=("local",))
