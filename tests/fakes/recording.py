"""What the fakes keep of each request, for tests to assert on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.faults import Fault


@dataclass
class RecordedRequest:
    """One request as received (header names lower-cased; json is None if the body wasn't JSON)."""

    path: str
    headers: dict[str, str]
    json: Any | None
    received_at: float
    method: str = "POST"
    fault: Fault | None = field(default=None, compare=False)
    query: dict[str, str] = field(default_factory=dict)


def lower_headers(request: web.Request) -> dict[str, str]:
    """Header names lower-cased; repeated headers joined with ", " as HTTP allows."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
