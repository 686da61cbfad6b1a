"""OpenAPI descriptions of the real wire shapes. Validation itself is in validation.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class EmbeddingRequest(BaseModel):
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, strings, token IDs, or arrays of token IDs (1 to 2048 items)."
    )
    model: str
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": model.model_json_schema(ref_template="#/$defs/{model}")}}


EMBEDDINGS_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": _json(EmbeddingRequest)},
}


EMBEDDINGS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Embeddings, in input order", "model": EmbeddingResponse},
    **{
        status: {"description": description, "model": ErrorResponse}
        for status, description in {
            400: "Invalid request",
            401: "Missing or invalid API key",
            413: "Request body too large",
            429: "Rate limit exceeded",
            502: "Upstream failure",
            503: "Every route is cooling down",
            504: "Upstream timeout",
        }.items()
    },
}
