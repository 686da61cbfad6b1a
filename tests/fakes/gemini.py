"""Google's Gemini API ``batchEmbedContents`` wire format.

``POST /v1beta/models/{model}:batchEmbedContents`` with the key in ``x-goog-api-key``: a body
of ``requests: [{model: "models/{model}", content: {parts: [{text}]}, taskType,
outputDimensionality}]`` (at most 100). Success: ``{"embeddings": [{"values": [...]}]}``, no
usage; errors: ``{"error": {"code", "message", "status"}}`` — a wrong key is a 400
INVALID_ARGUMENT whose details carry reason API_KEY_INVALID. Source: googleapis/python-genai
(google/genai/models.py, _api_client.py, errors.py), https://ai.google.dev/api/embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tests.fakes.wire import BadRequest, EmbeddingCall, Entries, WireProtocol, is_int

TASK_TYPES = (
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)
MAX_REQUESTS = 100
_PATH = re.compile(r"^/v1beta/models/([^/:]+):batchEmbedContents$")
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}


class GeminiWire(WireProtocol):
    name = "gemini"
    paths = ("/v1beta/models/gemini-embedding-001:batchEmbedContents",)
    base_path = "/v1beta"

    def matches(self, path: str) -> bool:
        return _PATH.match(path) is not None

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("x-goog-api-key") == api_key

    def unauthorized(self) -> tuple[int, bytes]:
        body = {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            }
        }
        return 400, orjson.dumps(body)

    def parse(self, payload: Any, native_dims: Callable[[str], int]) -> EmbeddingCall:
        raise NotImplementedError("the model is in the path: see parse_request")

    def parse_request(
        self,
        payload: Any,
        native_dims: Callable[[str], int],
        path: str,
        query: Mapping[str, str],
    ) -> EmbeddingCall:
        match = _PATH.match(path)
        assert match is not None  # matches() let it through
        model = match.group(1)
        requests = payload.get("requests") if isinstance(payload, dict) else None
        if not isinstance(requests, list) or not requests:
            raise BadRequest("* BatchEmbedContentsRequest.requests: requests must not be empty")
        if len(requests) > MAX_REQUESTS:
            raise BadRequest(f"* BatchEmbedContentsRequest.requests: at most {MAX_REQUESTS}")
        native = native_dims(model)
        texts: list[str] = []
        dimensions: set[int | None] = set()
        for number, request in enumerate(requests):
            where = f"* BatchEmbedContentsRequest.requests[{number}]"
            if not isinstance(request, dict) or request.get("model") != f"models/{model}":
                raise BadRequest(f"{where}.model: the model must be models/{model}, as in the URL")
            parts = (request.get("content") or {}).get("parts")
            if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
                raise BadRequest(f"{where}.content.parts: one text part expected")
            text = parts[0].get("text")
            if not isinstance(text, str) or not text:
                raise BadRequest(f"{where}.content.parts[0].text: must not be empty")
            if request.get("taskType", "TASK_TYPE_UNSPECIFIED") not in TASK_TYPES:
                raise BadRequest(f"{where}.task_type: invalid value")
            requested = request.get("outputDimensionality")
            if requested is not None and (not is_int(requested) or not 1 <= requested <= native):
                raise BadRequest(f"{where}.output_dimensionality: out of range")
            texts.append(text)
            dimensions.add(requested)
        if len(dimensions) != 1:
            raise BadRequest("this fake takes one outputDimensionality per batch")
        return EmbeddingCall(model, list(texts), native, dimensions.pop())

    def render(self, call: EmbeddingCall, entries: Entries) -> bytes:
        return orjson.dumps({"embeddings": [{"values": vector} for _, vector in entries]})

    def error_body(self, status: int, message: str, param: str | None = None) -> bytes:
        code = _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return orjson.dumps({"error": {"code": status, "message": message, "status": code}})
