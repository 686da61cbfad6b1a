"""Nugen v3: `POST {base}/inference/embeddings`, strings only, floats only.

Its response differs from OpenAI's (top-level `object: "embedding"`, float `created`, items
without `object`, `usage.total_tokens` only); the shared cycle reads `data` and this adapter
reads the usage, so the result has the common shape.
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.providers.base import UpstreamCall
from app.providers.http import HTTPProvider, usage_count


class NugenProvider(HTTPProvider):
    display_name = "Nugen"
    default_key_env = "NUGEN_API_KEY"
    path = "/inference/embeddings"
    supports_token_ids: ClassVar[bool] = False

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        # Nugen documents exactly these three fields.
        body: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        return body

    def error_message(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return None
        detail = body.get("detail", body.get("error"))
        if isinstance(detail, dict):
            detail = detail.get("message")
        elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
            detail = detail[0].get("msg")  # FastAPI-style validation errors
        return detail if isinstance(detail, str) and detail else None

    def prompt_tokens(self, usage: Any) -> int | None:
        return usage_count(usage, "total_tokens")
