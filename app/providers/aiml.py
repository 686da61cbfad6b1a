"""AI/ML API: OpenAI-shaped `POST {base}/embeddings`; documents only model, input, dimensions.

Source: https://docs.aimlapi.com (seed 003).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.providers.http import HTTPProviderConfig
from app.providers.openai_compatible import OpenAICompatibleProvider


class AimlConfig(HTTPProviderConfig):
    type: Literal["aiml"]
    base_url: str = Field(default="https://api.aimlapi.com/v1", min_length=1)
    key_env = "AIML_API_KEY"
    env_defaults = {"AIML_BASE_URL": "https://api.aimlapi.com/v1"}


class AimlProvider(OpenAICompatibleProvider):
    display_name = "AI/ML API"
    config_type = AimlConfig
