"""The local scenarios' own parts: the model directory they serve, and the in-process ceilings.

`local` (one sentence a request at concurrency 16) and `local-bulk` (one request of 2,048
sentences) load the gateway serving a sentence-transformers directory, the same directory
Infinity serves when it is a peer (bench/peers/infinity.py): all-MiniLM-L6-v2's int8 graph and
tokenizer as the gateway ships them, with the files sentence-transformers writes around them
(tests/local_model_dirs.py). Their `direct` rows are no server: bench/local_model.py in a
process of its own, fed batches of 32 (`local`: the provider's own code; `local-bulk`: a plain
onnxruntime session, none of the gateway's code).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.procs import Managed, run_bounded
from bench.session import ROOT, Bench, Result, log

LOCAL_CONCURRENCY = 16
LOCAL_BATCH = 32
LOCAL_DIMS = 384


def build_model_dir(workdir: Path) -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers directory, laid out so Infinity loads it
    too: model.onnx at the root, and config.json's max_position_embeddings at the model's
    max_seq_length (256), which is where Infinity truncates (the graph itself ignores it)."""
    from tests.local_model_dirs import BERT_CONFIG, DirModel, write_model_dir

    root = write_model_dir(workdir / "all-MiniLM-L6-v2", DirModel(["mean"], graph_at="model.onnx"))
    config = {**BERT_CONFIG, "max_position_embeddings": 256}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root


def measure_in_process(bench: Bench, scenario: str, bare: bool) -> Result:
    """A `direct` row: bench/local_model.py in its own process, sentences/s in batches."""
    args = bench.args
    bound = ["--max-batches", str(max(1, args.requests // LOCAL_BATCH))] if args.requests else []
    if bare:
        assert bench.local_model_dir is not None
        bound += ["--bare", str(bench.local_model_dir)]
    child = Managed(
        f"local model, batches ({scenario})",
        [
            sys.executable, "-m", "bench.local_model",
            "--batch", str(LOCAL_BATCH),
            "--duration", str(args.duration),
            *bound,
        ],
        log_path=bench.workdir / f"{scenario}-direct.log",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    # run_bounded sends the child's stdout to its log; the JSON is its last line.
    if run_bounded(child, timeout=args.duration + 180) != 0:
        raise RuntimeError(f"local model benchmark failed:\n{child.log_tail()}")
    load = json.loads(child.log_path.read_text().strip().splitlines()[-1])
    result = Result(
        scenario=scenario,
        target="direct",
        rps=load["sentences_per_s"],
        p50_ms=load["batch_ms"]["p50"],
        p99_ms=load["batch_ms"]["p99"],
        completed=load["sentences"],
        errors=0,
        ok=load["sentences"],
        cpu_s=load["cpu_s"],
        rss_start_mb=0.0,
        rss_end_mb=0.0,
        peak_rss_mb=0.0,
        loadgen_cpu_s=0.0,
    )
    what = "plain onnxruntime" if bare else "the provider"
    log(
        f"  {scenario:<16} direct   {result.rps:8.1f} sentences/s, {what} in batches of "
        f"{LOCAL_BATCH} ({load['threads']} thread(s) x {load['workers']} workers)"
    )
    return result
