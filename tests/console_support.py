"""Helpers for the console tests: a gateway with the console on, and a signed-in httpx client."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import providers_for
from tests.harness import ThreadedGateway, free_port, model_entry, write_registry
from tests.keys_support import ADMIN_TOKEN

MODEL = "text-embedding-3-small"
# $1 per thousand tokens: one short request costs a visible fraction of a cent.
PRICED = "priced-model"
FAILOVER = "failover-model"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def console_registry(directory: Path, nanogpt, aiml, nugen) -> Path:
    models = {
        PRICED: model_entry([{"provider": "nanogpt", "model": "priced"}], price=1000.0),
        MODEL: model_entry(
            [
                {"provider": "nanogpt", "model": MODEL},
                {"provider": "aiml", "model": MODEL},
            ]
        ),
        "keyless-model": model_entry([{"provider": "nokey", "model": "keyless"}]),
        # Its first route's upstream is not listening: calls fail over, and Routes says why.
        FAILOVER: model_entry(
            [
                {"provider": "down", "model": "down", "max_attempts": 1},
                {"provider": "nanogpt", "model": FAILOVER},
            ]
        ),
    }
    providers = providers_for(nanogpt, aiml, nugen)
    providers["nokey"] = {"type": "nanogpt", "base_url": nanogpt.base_url, "api_key": ""}
    closed = f"http://127.0.0.1:{free_port()}/v1"
    providers["down"] = {"type": "nanogpt", "base_url": closed, "api_key": "down-key"}
    return write_registry(directory / "models.yaml", providers, models)


def console_gateway(registry: Path, keys_db: Path, **settings: Any) -> ThreadedGateway:
    defaults: dict[str, Any] = {"RATE_LIMIT_PER_SECOND": 0}
    return ThreadedGateway(
        MODELS_CONFIG=str(registry),
        GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
        KEYS_DB=str(keys_db),
        **(defaults | settings),
    )


def signed_in(base_url: str, token: str = ADMIN_TOKEN) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=10)
    response = client.post("/ui/login", data={"token": token})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui"
    return client


def csrf_of(client: httpx.Client, path: str = "/ui/keys") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF_FIELD.search(page.text)
    assert found is not None
    return found.group(1)
