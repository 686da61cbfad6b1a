"""NanoGPT: OpenAI-shaped `POST {base}/embeddings`; documents `encoding_format` and `user`.

Source: https://docs.nano-gpt.com/api-reference/embeddings (seeds 001, 002).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.providers.http import HTTPProviderConfig
from app.providers.openai_compatible import OpenAICompatibleProvider


class NanoGPTConfig(HTTPProviderConfig):
    type: Literal["nanogpt"]
    base_url: str = Field(default="https://nano-gpt.com/api/v1", min_length=1)
    key_env = "NANOGPT_API_KEY"
    env_defaults = {"NANOGPT_BASE_URL": "https://nano-gpt.com/api/v1"}


class NanoGPTProvider(OpenAICompatibleProvider):
    display_name = "NanoGPT"
    config_type = NanoGPTConfig
    documents_user = True
    documents_encoding_format = True
