"""The OpenAI embeddings wire protocol, which NanoGPT and AI/ML API both speak."""

from __future__ import annotations

from typing import Any, ClassVar

from app.providers.base import UpstreamCall, UpstreamResult
from app.providers.http import UpstreamHTTP, error_from_response, malformed, parse_json, short
from app.providers.validation import MalformedResponse, vectors_from_items
from app.registry import ProviderConfig


class OpenAICompatibleProvider:
    display_name: ClassVar[str] = "OpenAI-compatible upstream"
    default_key_env: ClassVar[str] = "the provider's API key"
    # Send only the optional fields the upstream documents.
    documents_user: ClassVar[bool] = False
    documents_encoding_format: ClassVar[bool] = False

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self._url = config.base_url.rstrip("/") + "/embeddings"
        self._key = config.api_key.get_secret_value() if config.api_key else None
        self._key_env = config.api_key_env or self.default_key_env
        self._http = UpstreamHTTP(name, self.display_name, config.max_concurrency)

    def payload(self, call: UpstreamCall) -> dict[str, Any]:
        body: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.want_base64 and self.documents_encoding_format:
            body["encoding_format"] = "base64"
        if call.dimensions is not None:
            body["dimensions"] = call.dimensions
        if call.user is not None and self.documents_user:
            body["user"] = call.user
        return body

    async def embed(self, call: UpstreamCall) -> UpstreamResult:
        headers = {"x-request-id": call.request_id}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        response = await self._http.post_json(self._url, self.payload(call), headers, call.timeout)
        if response.status_code != 200:
            raise error_from_response(
                self.name,
                self.display_name,
                response,
                self._error_message(response),
                self._key_env,
            )
        body = parse_json(self.name, self.display_name, response)
        try:
            if not isinstance(body, dict):
                raise MalformedResponse("response is not a JSON object")
            vectors = vectors_from_items(body.get("data"), len(call.inputs), call.expected_dims)
        except MalformedResponse as exc:
            raise malformed(self.name, self.display_name, str(exc)) from None
        return UpstreamResult(vectors, _prompt_tokens(body.get("usage")))

    def _error_message(self, response: Any) -> str | None:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            return None
        message = error.get("message") if isinstance(error, dict) else error
        return short(message, self._key) if isinstance(message, str) and message else None

    async def aclose(self) -> None:
        await self._http.aclose()


def _prompt_tokens(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    for field in ("prompt_tokens", "total_tokens"):
        value = usage.get(field)
        if type(value) is int and value >= 0:
            return value
    return None
