"""Nugen v3: `POST {base}/inference/embeddings`, strings only, floats only.

Its response differs from OpenAI's (top-level `object: "embedding"`, float `created`, items
without `object`, `usage.total_tokens` only); its `data` list reads like OpenAI's, and this
adapter reads the usage, so the result has the common shape.

Source: Nugen's API reference for `POST /api/v3/inference/embeddings` (seed 004).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from app.providers.base import Capabilities, UpstreamCall
from app.providers.http import HTTPProvider, HTTPProviderConfig, usage_count
from app.providers.validation import parse_embeddings


class NugenConfig(HTTPProviderConfig):
    type: Literal["nugen"]
    base_url: str = Field(default="https://api.nugen.in/api/v3", min_length=1)
    key_env = "NUGEN_API_KEY"
    env_defaults = {"NUGEN_BASE_URL": "https://api.nugen.in/api/v3"}


class NugenProvider(HTTPProvider):
    display_name = "Nugen"
    config_type = NugenConfig
    path = "/inference/embeddings"

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        return Capabilities(token_ids=False)

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        # Nugen documents exactly these three fields.
        body: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        return body

    def parse(self, body: bytes, call: UpstreamCall) -> tuple[np.ndarray, int | None]:
        vectors, usage = parse_embeddings(body, len(call.inputs), call.expected_dims)
        return vectors, usage_count(usage, "total_tokens")

    def error_message(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return None
        detail = body.get("detail", body.get("error"))
        if isinstance(detail, dict):
            detail = detail.get("message")
        elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
            detail = detail[0].get("msg")  # FastAPI-style validation errors
        return detail if isinstance(detail, str) and detail else None
