"""Azure OpenAI's embeddings wire format: OpenAI's body, addressed per deployment.

``POST /openai/deployments/{deployment}/embeddings?api-version=...`` with the key in an
``api-key`` header; the deployment names the model (a ``model`` in the body is ignored).
Success and error bodies are OpenAI's. Source: openai/openai-python src/openai/lib/azure.py;
https://learn.microsoft.com/azure/ai-foundry/openai/reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tests.fakes.openai import OpenAIWire
from tests.fakes.wire import BadRequest, EmbeddingCall

_PATH = re.compile(r"^/openai/deployments/([^/]+)/embeddings$")


class AzureWire(OpenAIWire):
    name = "azure"
    paths = ("/openai/deployments/text-embedding-3-small/embeddings",)
    base_path = ""

    def matches(self, path: str) -> bool:
        return _PATH.match(path) is not None

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("api-key") == api_key

    def unauthorized(self) -> tuple[int, bytes]:
        message = (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource."
        )
        return 401, self.error_body(401, message)

    def parse_request(
        self,
        payload: Any,
        native_dims: Callable[[str], int],
        path: str,
        query: Mapping[str, str],
    ) -> EmbeddingCall:
        if not query.get("api-version"):
            raise BadRequest("Missing required query parameter: api-version", status=404)
        match = _PATH.match(path)
        assert match is not None
        if not isinstance(payload, dict):
            raise BadRequest("request body must be a JSON object")
        return self.parse({**payload, "model": match.group(1)}, native_dims)
