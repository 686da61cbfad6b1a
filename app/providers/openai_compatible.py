"""The OpenAI embeddings wire protocol, which NanoGPT and AI/ML API both speak."""

from __future__ import annotations

from typing import Any, ClassVar

from app.providers.base import UpstreamCall
from app.providers.http import HTTPProvider


class OpenAICompatibleProvider(HTTPProvider):
    display_name = "OpenAI-compatible upstream"
    path = "/embeddings"
    # Send only the optional fields the upstream documents.
    documents_user: ClassVar[bool] = False
    documents_encoding_format: ClassVar[bool] = False

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        body: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.want_base64 and self.documents_encoding_format:
            body["encoding_format"] = "base64"
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        if call.user is not None and self.documents_user:
            body["user"] = call.user
        return body

    def error_message(self, body: Any) -> str | None:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        return message if isinstance(message, str) and message else None
