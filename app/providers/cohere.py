"""`cohere`: Cohere's v2 embed endpoint, `POST {base}/v2/embed` with `Authorization: Bearer`.

Request: `model`, `texts` (at most 96 per call), the required `input_type` (`search_query`,
`search_document`, ...), `embedding_types` (we ask for `float` only: Cohere documents its
base64 as "the float embedding bytes" without naming their width, so we do not rely on it),
and `output_dimension` (embed-v4 and newer: 256, 512, 1024 or 1536). Response:
`embeddings.float` (one list per text, in order) and `meta.billed_units.input_tokens`.
Errors: `{"id": ..., "message": ...}`.

Sources: cohere-ai/cohere-python src/cohere/v2/raw_client.py (the `v2/embed` call and its
JSON fields), src/cohere/types/embed_by_type_response*.py, api_meta_billed_units.py,
embed_input_type.py, environment.py (https://api.cohere.com);
https://docs.cohere.com/reference/embed; https://docs.cohere.com/reference/errors.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import simdjson
from pydantic import Field

from app.config.registry import MAX_INPUTS
from app.providers.base import Capabilities, UpstreamCall
from app.providers.http import HTTPProvider, HTTPProviderConfig
from app.providers.validation import load_object, parse_vector_list

INPUT_TYPES = {"query": "search_query", "document": "search_document"}


class CohereConfig(HTTPProviderConfig):
    type: Literal["cohere"]
    base_url: str = Field(default="https://api.cohere.com", min_length=1)
    max_batch_size: int = Field(default=96, ge=1, le=MAX_INPUTS)
    # What Cohere does with an input over the model's limit: NONE is an error, as elsewhere.
    truncate: Literal["NONE", "START", "END"] | None = None
    key_env = "COHERE_API_KEY"
    env_defaults = {"COHERE_BASE_URL": "https://api.cohere.com"}


class CohereProvider(HTTPProvider):
    display_name = "Cohere"
    config_type = CohereConfig
    gen_ai_provider_name = "cohere"
    path = "/v2/embed"

    def __init__(self, name: str, config: CohereConfig) -> None:
        super().__init__(name, config)
        self._truncate = config.truncate

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        return Capabilities(token_ids=False, max_inputs=96, input_type=True)

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": call.upstream_model,
            "texts": call.inputs,
            # Required by Cohere; plain OpenAI clients send none, and most calls are documents.
            "input_type": INPUT_TYPES[call.input_type or "document"],
            "embedding_types": ["float"],
        }
        if call.dimensions is not None:
            body["output_dimension"] = call.dimensions
        if self._truncate is not None:
            body["truncate"] = self._truncate
        return body

    def parse(self, body: bytes, call: UpstreamCall) -> tuple[np.ndarray, int | None]:
        document = load_object(body)
        embeddings = document.get("embeddings")
        floats = embeddings.get("float") if isinstance(embeddings, simdjson.Object) else None
        vectors = parse_vector_list(floats, len(call.inputs), call.expected_dims, "float")
        meta = document.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, simdjson.Object) else None
        tokens = billed.get("input_tokens") if isinstance(billed, simdjson.Object) else None
        # Typed as a number in Cohere's schema; only a whole, non-negative one is a count.
        if isinstance(tokens, int | float) and tokens >= 0 and float(tokens).is_integer():
            return vectors, int(tokens)
        return vectors, None

    def error_message(self, body: Any) -> str | None:
        message = body.get("message") if isinstance(body, dict) else None
        return message if isinstance(message, str) and message else None
