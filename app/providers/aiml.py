"""AI/ML API: OpenAI-shaped `POST {base}/embeddings`; documents only model, input, dimensions."""

from __future__ import annotations

from app.providers.openai_compatible import OpenAICompatibleProvider


class AimlProvider(OpenAICompatibleProvider):
    display_name = "AI/ML API"
    default_key_env = "AIML_API_KEY"
