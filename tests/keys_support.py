"""Helpers for the managed-key tests: admin calls and embedding calls over real sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

ADMIN_TOKEN = "admin-test-token-abc123"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def admin(base_url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**ADMIN, **kwargs.pop("headers", {})}
    url = f"{base_url}/admin/v1{path}"
    return httpx.request(method, url, headers=headers, timeout=10, **kwargs)


def create_key(base_url: str, **policy: Any) -> dict[str, Any]:
    response = admin(base_url, "POST", "/keys", json=policy)
    assert response.status_code == 201, response.text
    return response.json()


def embed(
    base_url: str, key: str, model: str, text: str = "hello world", **extra: Any
) -> httpx.Response:
    # A fresh connection per call, so with several workers calls land on any of them.
    return httpx.post(
        f"{base_url}/v1/embeddings",
        headers={"authorization": f"Bearer {key}", "connection": "close"},
        json={"model": model, "input": text, "encoding_format": "float", **extra},
        timeout=10,
    )


def wait_until(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, "condition not met in time"
        time.sleep(step)
    return time.monotonic() - began
