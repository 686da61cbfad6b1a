"""A 200 MB upload streams from the socket to the file store: the gateway process's resident memory
grows by well under the file's size (read from /proc), and the stored file is the upload, byte for
byte. One past the cap is refused with a 413 from its Content-Length, before its body is read."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.harness import GatewayProcess

KEY = "sk-upload-test-key-0001"
MB = 1024 * 1024
SIZE = 200 * MB - 256 * 1024  # just under the default cap, framing included
MOST_GROWTH = 100 * MB
BOUNDARY = "upload-memory-boundary"
LINE = (
    b'{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", '
    b'"body": {"model": "m", "input": "' + b"y" * 900 + b'"}}\n'
)


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    found = {}
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = row.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def _body(digest: hashlib._Hash) -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="big.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    block = LINE * (MB // len(LINE))
    sent = 0
    while sent < SIZE:
        piece = block[: SIZE - sent]
        digest.update(piece)
        sent += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_200_mb_upload_streams_through_in_bounded_memory(tmp_path: Path) -> None:
    env = {
        "MODELS_CONFIG": str(Path(__file__).resolve().parents[2] / "config/models.yaml"),
        "GATEWAY_API_KEYS": KEY,
        "BATCH_DIR": str(tmp_path / "files"),
        "BATCH_DB": str(tmp_path / "batches.db"),
        "RATE_LIMIT_PER_SECOND": "0",
    }
    with GatewayProcess(env) as gateway:
        assert gateway.process is not None
        pid = gateway.process.pid
        headers = {
            "authorization": f"Bearer {KEY}",
            "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        }
        # Warm: the first upload loads what every upload uses (the multipart parser, the store).
        warm = httpx.post(
            f"{gateway.url}/v1/files",
            headers={"authorization": f"Bearer {KEY}"},
            files={"file": ("warm.jsonl", LINE)},
            data={"purpose": "batch"},
        )
        assert warm.status_code == 200, warm.text
        before = _status(pid)["VmRSS"]
        digest = hashlib.sha256()
        answer = httpx.post(
            f"{gateway.url}/v1/files", headers=headers, content=_body(digest), timeout=120
        )
        assert answer.status_code == 200, answer.text
        peak = _status(pid)["VmHWM"]
        assert answer.json()["bytes"] == SIZE
        print(f"RSS before {before / MB:.0f} MB, peak {peak / MB:.0f} MB")
        assert peak - before < MOST_GROWTH
        stored = tmp_path / "files" / "files" / answer.json()["id"]
        with stored.open("rb") as handle:
            assert hashlib.file_digest(handle, "sha256").hexdigest() == digest.hexdigest()

        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                + b"Content-Length: %d\r\n\r\n" % (300 * MB)
            )  # fmt: skip
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
