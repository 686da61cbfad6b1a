"""The official openai Node SDK, with its defaults, against the gateway and the fake upstreams."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CLIENT_KEY
from tests.fakes import FakeUpstream, fake_vector

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "embed.mjs"
INSTALL_HINT = "run `make test` (or `npm ci --prefix tests/node --no-audit --no-fund`)"


@pytest.fixture(scope="module")
def node() -> str:
    # A missing toolchain must fail the suite, never skip it quietly.
    binary = shutil.which("node")
    if binary is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}", pytrace=False)
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail(f"tests/node/node_modules has no openai SDK: {INSTALL_HINT}", pytrace=False)
    return binary


def embed_with_node(
    node: str, base_url: str, model: str, inputs: str | list[str]
) -> dict[str, Any]:
    result = subprocess.run(
        [node, str(SCRIPT), model, json.dumps(inputs)],
        env={**os.environ, "GATEWAY_BASE_URL": base_url, "GATEWAY_API_KEY": CLIENT_KEY},
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"embed.mjs failed:\n{result.stderr}{result.stdout}"
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("model", "native", "fake_name", "inputs"),
    [
        ("text-embedding-3-small", 16, "nanogpt", "hello from node"),
        ("text-embedding-3-small", 16, "nanogpt", ["first text", "second text", "third"]),
        ("nugen-flash-embed", 32, "nugen", ["first text", "ünïcödé text 🚀"]),
    ],
)
def test_node_sdk_defaults_get_the_upstreams_float32_values_exactly(
    request: pytest.FixtureRequest,
    gateway,
    node: str,
    model: str,
    native: int,
    fake_name: str,
    inputs: str | list[str],
) -> None:
    fake: FakeUpstream = request.getfixturevalue(fake_name)
    fake.clear()  # _clean_fakes only sees fixtures named in the signature, not this one
    out = embed_with_node(node, f"{gateway.url}/v1", model, inputs)

    # The SDK, left to its defaults, asked for base64 (and nothing else was added)...
    assert [entry["body"] for entry in out["sent"]] == [
        {"model": model, "input": inputs, "encoding_format": "base64"}
    ]
    assert out["sent"][0]["url"] == f"{gateway.url}/v1/embeddings"
    # ...and its own base64 decoding gives back the upstream's float32 values bit for bit, which
    # any byte-order, padding or float64-vs-float32 mistake in the gateway would break.
    texts = [inputs] if isinstance(inputs, str) else inputs
    expected = np.stack([fake_vector(model, text, native) for text in texts]).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(out["vectors"], dtype=np.float64), expected)
    assert out["model"] == model
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
    # The upstream was asked for floats: base64 is the gateway's own encoding.
    sent = fake.embedding_requests()
    assert [text for r in sent for text in r.json["input"]] == texts
    assert all("encoding_format" not in r.json for r in sent)


def test_node_sdk_runs_a_batch_end_to_end(gateway, node: str, nanogpt: FakeUpstream, tmp_path):
    nanogpt.clear()
    texts = [f"node batch {n}" for n in range(6)]
    path = tmp_path / "node-batch.jsonl"
    path.write_bytes(
        b"".join(
            json.dumps(
                {
                    "custom_id": f"n-{n}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": text},
                }
            ).encode()
            + b"\n"
            for n, text in enumerate(texts)
        )
    )
    result = subprocess.run(
        [node, str(NODE_DIR / "batch.mjs"), str(path)],
        env={**os.environ, "GATEWAY_BASE_URL": f"{gateway.url}/v1", "GATEWAY_API_KEY": CLIENT_KEY},
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"batch.mjs failed:\n{result.stderr}{result.stdout}"
    out = json.loads(result.stdout)
    assert out["file"]["filename"] == "node-batch.jsonl"
    assert out["file"]["bytes"] == path.stat().st_size
    batch = out["batch"]
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert batch["metadata"] == {"from": "node"}
    # Auto-pagination one item a page reached this batch and its files (has_more was honest).
    assert batch["id"] in out["listed_batches"]
    assert {batch["input_file_id"], batch["output_file_id"]} <= set(out["listed_files"])
    lines = {e["custom_id"]: e for e in map(json.loads, out["output"].splitlines())}
    assert set(lines) == {f"n-{n}" for n in range(6)}
    for n, text in enumerate(texts):
        vector = lines[f"n-{n}"]["response"]["body"]["data"][0]["embedding"]
        assert vector == fake_vector("text-embedding-3-small", text, 16).tolist()
