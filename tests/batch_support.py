"""Helpers for the Batch API tests: input files, waiting for a batch, reading its result files,
and the settings that keep batches small and quick in tests."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from openai import OpenAI
from openai.types import Batch

# Small chunks and quick polls: a test batch of a few dozen lines is several chunks, and a
# cancel or a dead worker's lease is seen in well under a second.
FAST_BATCHES = {
    "BATCH_CHUNK_LINES": "4",
    "BATCH_POLL_SECONDS": "0.05",
    "BATCH_LEASE_SECONDS": "2",
    "BATCH_DRAIN_SECONDS": "2",
}
FINAL = ("completed", "failed", "expired", "cancelled")


def line(custom_id: str, body: dict[str, Any], *, url: str = "/v1/embeddings") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: Iterable[dict[str, Any] | bytes]) -> bytes:
    return b"".join(
        (item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n" for item in lines
    )


def texts_file(model: str, texts: list[list[str]], **body: Any) -> bytes:
    """One line per list of inputs: custom ids `req-0`, `req-1`, ..."""
    return jsonl(
        line(f"req-{n}", {"model": model, "input": inputs, **body})
        for n, inputs in enumerate(texts)
    )


def upload(client: OpenAI, content: bytes, name: str = "batch.jsonl") -> str:
    return client.files.create(file=(name, content), purpose="batch").id


def start(client: OpenAI, content: bytes, window: str = "24h", **extra: Any) -> Batch:
    file_id = upload(client, content)
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window=window, **extra
    )


def wait_for(
    client: OpenAI, batch_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 30
) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.05)


def file_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = client.files.content(file_id).content
    return [orjson.loads(raw) for raw in content.splitlines() if raw]


def results(client: OpenAI, batch: Batch) -> tuple[dict[str, Any], dict[str, Any]]:
    """(output lines, error lines), each by custom_id; fails on a custom_id seen twice."""
    out = file_lines(client, batch.output_file_id)
    err = file_lines(client, batch.error_file_id)
    ids = [entry["custom_id"] for entry in out + err]
    assert len(ids) == len(set(ids)), "a custom_id appears more than once"
    return {e["custom_id"]: e for e in out}, {e["custom_id"]: e for e in err}
