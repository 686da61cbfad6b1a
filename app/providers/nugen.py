"""Nugen v3: `POST {base}/inference/embeddings`, strings only, floats only.

Its response differs from OpenAI's (top-level `object: "embedding"`, float `created`, items
without `object`, `usage.total_tokens` only); this adapter reads it into the common result.
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.providers.base import UpstreamCall, UpstreamResult
from app.providers.http import UpstreamHTTP, error_from_response, malformed, parse_json, short
from app.providers.validation import MalformedResponse, vectors_from_items
from app.registry import ProviderConfig


class NugenProvider:
    display_name: ClassVar[str] = "Nugen"
    default_key_env: ClassVar[str] = "NUGEN_API_KEY"
    supports_token_ids: ClassVar[bool] = False

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self._url = config.base_url.rstrip("/") + "/inference/embeddings"
        self._key = config.api_key.get_secret_value() if config.api_key else None
        self._key_env = config.api_key_env or self.default_key_env
        self._http = UpstreamHTTP(name, self.display_name, config.max_concurrency)

    async def embed(self, call: UpstreamCall) -> UpstreamResult:
        # Nugen documents exactly these three fields.
        payload: dict[str, Any] = {"model": call.upstream_model, "input": call.inputs}
        if call.dimensions is not None:
            payload["dimensions"] = call.dimensions
        headers = {"x-request-id": call.request_id}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        response = await self._http.post_json(self._url, payload, headers, call.timeout)
        if response.status_code != 200:
            message = self._error_message(response)
            raise error_from_response(
                self.name, self.display_name, response, message, self._key_env
            )
        body = parse_json(self.name, self.display_name, response)
        try:
            if not isinstance(body, dict):
                raise MalformedResponse("response is not a JSON object")
            vectors = vectors_from_items(body.get("data"), len(call.inputs), call.expected_dims)
        except MalformedResponse as exc:
            raise malformed(self.name, self.display_name, str(exc)) from None
        usage = body.get("usage")
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        return UpstreamResult(vectors, total if type(total) is int and total >= 0 else None)

    def _error_message(self, response: Any) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        detail = body.get("detail", body.get("error"))
        if isinstance(detail, dict):
            detail = detail.get("message")
        elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
            detail = detail[0].get("msg")
        return short(detail, self._key) if isinstance(detail, str) and detail else None

    async def aclose(self) -> None:
        await self._http.aclose()
