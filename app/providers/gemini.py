"""`gemini`: Google's Gemini API, `POST {base}/models/{model}:batchEmbedContents` with the key
in an `x-goog-api-key` header.

Request: `requests: [{model: "models/{model}", content: {parts: [{text}]}, taskType,
outputDimensionality}]`, one per input. `taskType` is RETRIEVAL_QUERY or RETRIEVAL_DOCUMENT
from our `input_type` (omitted when there is none); `outputDimensionality` shortens the vector
(gemini-embedding-001: 128 to 3072; Google recommends 768, 1536 or 3072). Response:
`embeddings: [{values: [...]}]` in request order, and no token count, so the gateway counts.
Errors: `{"error": {"code", "message", "status", "details"}}`; a wrong key is a 400 whose
details carry `reason: API_KEY_INVALID` (google.rpc.ErrorInfo), which we treat as auth.

Sources: googleapis/python-genai google/genai/models.py (`{model}:batchEmbedContents`,
_EmbedContentParametersPrivate_to_mldev, _EmbedContentConfig_to_mldev), _api_client.py
(https://generativelanguage.googleapis.com/, v1beta, `x-goog-api-key`), errors.py (error
body); https://ai.google.dev/api/embeddings; the API_KEY_INVALID body as reported in
google-gemini/gemini-cli#25198.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field
from yarl import URL

from app.config.registry import MAX_INPUTS
from app.providers.base import Capabilities, Failure, UpstreamCall
from app.providers.http import HTTPProvider, HTTPProviderConfig
from app.providers.validation import load_object, parse_vector_list

TASK_TYPES = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"}


class GeminiConfig(HTTPProviderConfig):
    type: Literal["gemini"]
    base_url: str = Field(default="https://generativelanguage.googleapis.com/v1beta", min_length=1)
    # batchEmbedContents takes at most 100 requests per call.
    max_batch_size: int = Field(default=100, ge=1, le=MAX_INPUTS)
    key_env = "GEMINI_API_KEY"
    env_defaults = {"GEMINI_BASE_URL": "https://generativelanguage.googleapis.com/v1beta"}


class GeminiProvider(HTTPProvider):
    display_name = "Gemini"
    config_type = GeminiConfig
    gen_ai_provider_name = "gcp.gemini"

    def __init__(self, name: str, config: GeminiConfig) -> None:
        super().__init__(name, config)
        self._base = URL(config.base_url.rstrip("/"))
        self._urls: dict[str, URL] = {}

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        return Capabilities(token_ids=False, max_inputs=100, input_type=True)

    def url(self, call: UpstreamCall) -> URL:
        url = self._urls.get(call.upstream_model)
        if url is None:
            url = self._base / "models" / f"{call.upstream_model}:batchEmbedContents"
            self._urls[call.upstream_model] = url
        return url

    def request_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key} if self._key else {}

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        common: dict[str, Any] = {"model": f"models/{call.upstream_model}"}
        if call.input_type is not None:
            common["taskType"] = TASK_TYPES[call.input_type]
        if call.dimensions is not None:
            common["outputDimensionality"] = call.dimensions
        return {
            "requests": [{**common, "content": {"parts": [{"text": text}]}} for text in call.inputs]
        }

    def parse(self, body: bytes, call: UpstreamCall) -> tuple[np.ndarray, int | None]:
        document = load_object(body)
        vectors = parse_vector_list(
            document.get("embeddings"), len(call.inputs), call.expected_dims, "embeddings", "values"
        )
        return vectors, None

    def failure_for(self, status: int, body: Any) -> Failure | None:
        # Google answers a wrong key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID: that
        # is our credentials, not the client's input.
        error = body.get("error") if isinstance(body, dict) else None
        details = error.get("details") if isinstance(error, dict) else None
        if isinstance(details, list) and any(
            isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
        ):
            return Failure.AUTH
        return None

    def error_message(self, body: Any) -> str | None:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return message if isinstance(message, str) and message else None
