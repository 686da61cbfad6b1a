"""NanoGPT: OpenAI-shaped `POST {base}/embeddings`; documents `encoding_format` and `user`."""

from __future__ import annotations

from app.providers.openai_compatible import OpenAICompatibleProvider


class NanoGPTProvider(OpenAICompatibleProvider):
    display_name = "NanoGPT"
    default_key_env = "NANOGPT_API_KEY"
    documents_user = True
    documents_encoding_format = True
