"""`voyage`: Voyage AI's `POST {base}/embeddings` with `Authorization: Bearer`.

Request: `model`, `input`, `input_type` (`query` / `document`, or omitted: no prompt
prepended), `output_dimension` (voyage-3.5, -3-large, -code-3: 256, 512, 1024, 2048),
`truncation` (Voyage's default is true) and `encoding_format: "base64"` (float32 bytes, as
the SDK decodes them). Response: OpenAI-shaped `data[].embedding` plus `usage.total_tokens`.
Errors: `{"detail": "..."}`.

Sources: voyage-ai/voyageai-python voyageai/client_async.py (`embed` fields),
voyageai/api_resources/embedding.py and util.py (base64 as float32), object/embeddings.py
(`usage.total_tokens`), api_resources/api_requestor.py (`detail` errors, Bearer auth,
https://api.voyageai.com/v1); https://docs.voyageai.com/reference/embeddings-api.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from app.providers.base import Capabilities, UpstreamCall
from app.providers.http import HTTPProvider, HTTPProviderConfig, usage_count
from app.providers.validation import parse_embeddings


class VoyageConfig(HTTPProviderConfig):
    type: Literal["voyage"]
    base_url: str = Field(default="https://api.voyageai.com/v1", min_length=1)
    # Voyage's own SDK asks for base64 by default; it is float32, as ours is.
    returns_base64: bool = True
    # Unset: Voyage's default (truncate over-long inputs). False makes them an error.
    truncation: bool | None = None
    max_batch_size: int = Field(default=128, ge=1, le=1000)
    key_env = "VOYAGE_API_KEY"
    env_defaults = {"VOYAGE_BASE_URL": "https://api.voyageai.com/v1"}


class VoyageProvider(HTTPProvider):
    display_name = "Voyage AI"
    config_type = VoyageConfig
    path = "/embeddings"

    def __init__(self, name: str, config: VoyageConfig) -> None:
        super().__init__(name, config)
        self._truncation = config.truncation

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        return Capabilities(token_ids=False, base64=True, input_type=True)

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        body: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.input_type is not None:
            body["input_type"] = call.input_type  # Voyage's words are ours
        if call.dimensions is not None:
            body["output_dimension"] = call.dimensions
        if self._truncation is not None:
            body["truncation"] = self._truncation
        if call.want_base64:
            body["encoding_format"] = "base64"
        return body

    def parse(self, body: bytes, call: UpstreamCall) -> tuple[np.ndarray, int | None]:
        vectors, usage = parse_embeddings(body, len(call.inputs), call.expected_dims)
        return vectors, usage_count(usage, "total_tokens")

    def error_message(self, body: Any) -> str | None:
        detail = body.get("detail") if isinstance(body, dict) else None
        return detail if isinstance(detail, str) and detail else None
