"""`azure_openai`: Azure OpenAI. The OpenAI embeddings protocol, addressed per deployment:
`POST {endpoint}/openai/deployments/{deployment}/embeddings?api-version=...` with the key in
an `api-key` header. A route's `model` is the deployment name.

Sources: https://learn.microsoft.com/azure/ai-foundry/openai/reference (Embeddings);
openai/openai-python src/openai/lib/azure.py (the `/deployments/{model}` path, `api-version`
query, `api-key` header, AZURE_OPENAI_API_KEY / AZURE_OPENAI_ENDPOINT env names).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from yarl import URL

from app.providers.base import UpstreamCall
from app.providers.http import HTTPProviderConfig
from app.providers.openai_compatible import OpenAICompatibleProvider


class AzureOpenAIConfig(HTTPProviderConfig):
    type: Literal["azure_openai"]
    # The resource endpoint, e.g. https://my-resource.openai.azure.com
    base_url: str = Field(min_length=1)
    # The latest GA data-plane version when this was written (2026-12).
    api_version: str = Field(default="2024-10-21", min_length=1)
    key_env = "AZURE_OPENAI_API_KEY"


class AzureOpenAIProvider(OpenAICompatibleProvider):
    display_name = "Azure OpenAI"
    config_type = AzureOpenAIConfig
    gen_ai_provider_name = "azure.ai.openai"
    documents_user = True
    documents_encoding_format = True

    def __init__(self, name: str, config: AzureOpenAIConfig) -> None:
        super().__init__(name, config)
        self._endpoint = config.base_url.rstrip("/")
        self._api_version = config.api_version
        self._urls: dict[str, URL] = {}

    def url(self, call: UpstreamCall) -> URL:
        url = self._urls.get(call.upstream_model)
        if url is None:  # one per deployment, parsed once
            url = URL(self._endpoint) / "openai" / "deployments" / call.upstream_model
            url = (url / "embeddings").with_query({"api-version": self._api_version})
            self._urls[call.upstream_model] = url
        return url

    def request_headers(self) -> dict[str, str]:
        return {"api-key": self._key} if self._key else {}
