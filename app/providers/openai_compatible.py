"""The OpenAI embeddings wire protocol, which NanoGPT, AI/ML API, OpenAI, Azure OpenAI and
the OpenAI-compatible servers speak: `POST {base}/embeddings` with `model`, `input`,
`encoding_format`, `dimensions`, `user`; `data[].embedding` and `usage.prompt_tokens` back;
errors as `{"error": {"message": ...}}`.

Source: https://platform.openai.com/docs/api-reference/embeddings (and openai/openai-python,
src/openai/resources/embeddings.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from app.providers.base import Capabilities, UpstreamCall
from app.providers.http import HTTPProvider, usage_count
from app.providers.validation import parse_embeddings


class OpenAICompatibleProvider(HTTPProvider):
    display_name = "OpenAI-compatible upstream"
    path = "/embeddings"
    # Send only the optional fields the upstream documents.
    documents_user: ClassVar[bool] = False
    documents_encoding_format: ClassVar[bool] = False

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        return Capabilities(base64=cls.documents_encoding_format)

    def sends_user(self) -> bool:
        return self.documents_user

    def sends_base64(self) -> bool:
        return self.documents_encoding_format

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        body: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.want_base64 and self.sends_base64():
            body["encoding_format"] = "base64"
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        if call.user is not None and self.sends_user():
            body["user"] = call.user
        return body

    def parse(self, body: bytes, call: UpstreamCall) -> tuple[np.ndarray, int | None]:
        vectors, usage = parse_embeddings(body, len(call.inputs), call.expected_dims)
        return vectors, self.prompt_tokens(usage)

    def prompt_tokens(self, usage: Any) -> int | None:
        return usage_count(usage, "prompt_tokens", "total_tokens")

    def error_message(self, body: Any) -> str | None:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        return message if isinstance(message, str) and message else None
