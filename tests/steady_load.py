"""Steady, bounded load for lifecycle tests: a few real clients, every outcome counted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

from tests.conftest import CLIENT_KEY

MODEL = "lifecycle-model"  # the model the tests' registries serve
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


@dataclass
class Outcome:
    sent: float  # time.monotonic() when the request was sent
    result: str  # "200" when a full, well-formed answer came; otherwise what happened


class Load:
    """A few clients that each send one request after another, each counting what it got.

    Half reuse a keep-alive connection (as a load balancer's pool does), half open a new one for
    every request (as new clients do). Bounded: it stops at `until` or after `most` requests.
    """

    def __init__(self, url: str, clients: int = 4, most: int = 4000) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self.sent_at: dict[str, float] = {}  # each request's input text -> when it was sent
        self.until = time.monotonic() + 60
        self._most = most
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i % 2 == 0,), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.until = 0
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self, keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with httpx.Client(timeout=15, limits=limits) as client:
            n = 0
            while time.monotonic() < self.until and len(self.outcomes) < self._most:
                n += 1
                text = f"drain {threading.get_ident()} {n}"
                sent = time.monotonic()
                with self._lock:
                    self.sent_at[text] = sent
                result = self._one(client, text)
                with self._lock:
                    self.outcomes.append(Outcome(sent, result))

    def _one(self, client: httpx.Client, text: str) -> str:
        try:
            response = client.post(
                f"{self.url}/v1/embeddings", json={"model": MODEL, "input": text}, headers=AUTH
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code != 200:
            return str(response.status_code)
        data = response.json()["data"]
        return "200" if len(data) == 1 and len(data[0]["embedding"]) == 16 else "short"

    def sent_between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.sent < end]
