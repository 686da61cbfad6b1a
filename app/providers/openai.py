"""`openai`: OpenAI itself and any server that speaks its embeddings protocol — Text
Embeddings Inference (`/v1/embeddings`), Infinity, vLLM, Ollama (`/v1`), LM Studio, LocalAI.

Compatible servers differ in what they accept beyond `model` and `input`, so the registry
says what this one takes (`supports_token_ids`, `supports_dimensions`, `supports_user`,
`returns_base64`) and only that is sent. The key is optional, since self-hosted servers often
have none; `organization` and `project` become OpenAI's `OpenAI-Organization` and
`OpenAI-Project` headers.

Sources: https://platform.openai.com/docs/api-reference/embeddings/create;
openai/openai-python src/openai/_client.py (auth and organization/project headers).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from app.providers.base import Capabilities
from app.providers.http import HTTPProviderConfig
from app.providers.openai_compatible import OpenAICompatibleProvider


class OpenAIConfig(HTTPProviderConfig):
    type: Literal["openai"]
    base_url: str = Field(default="https://api.openai.com/v1", min_length=1)
    organization: str | None = None
    project: str | None = None
    # Sent with every call, e.g. a self-hosted server's own auth; values are kept secret.
    headers: dict[str, SecretStr] = {}
    supports_token_ids: bool = False
    supports_dimensions: bool = True
    supports_user: bool = False
    # True for OpenAI itself: without its key the provider is not called and its models are
    # hidden. Self-hosted servers usually need none.
    requires_api_key: bool = False
    key_env = "OPENAI_API_KEY"
    env_defaults = {"OPENAI_BASE_URL": "https://api.openai.com/v1"}

    @property
    def usable(self) -> bool:
        return self.api_key is not None or not self.requires_api_key


class OpenAIProvider(OpenAICompatibleProvider):
    display_name = "OpenAI-compatible upstream"
    config_type = OpenAIConfig
    gen_ai_provider_name = "openai"

    def __init__(self, name: str, config: OpenAIConfig) -> None:
        super().__init__(name, config)
        self._static = {k.lower(): v.get_secret_value() for k, v in config.headers.items()}
        if config.organization:
            self._static["openai-organization"] = config.organization
        if config.project:
            self._static["openai-project"] = config.project
        self._user = config.supports_user
        self._base64 = config.returns_base64

    @classmethod
    def capabilities(cls, config: Any) -> Capabilities:
        # The registry says what this server does; `returns_base64` is its base64 flag.
        return Capabilities(
            token_ids=config.supports_token_ids,
            dimensions=config.supports_dimensions,
            base64=True,
        )

    def sends_user(self) -> bool:
        return self._user

    def sends_base64(self) -> bool:
        return self._base64

    def request_headers(self) -> dict[str, str]:
        return {**self._static, **super().request_headers()}
