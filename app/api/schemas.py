"""OpenAPI descriptions of the real wire shapes. Validation itself is in validation.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.config.registry import MAX_INPUTS

NonEmptyText = Annotated[str, Field(min_length=1)]
NonEmptyTokens = Annotated[list[int], Field(min_length=1)]
_INPUT_DESCRIPTION = (
    f"A string, strings, token IDs, or arrays of token IDs (1 to {MAX_INPUTS} items)."
)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "all-MiniLM-L6-v2", "input": "hello"}]}
    )

    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_INPUTS)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[NonEmptyTokens], Field(min_length=1, max_length=MAX_INPUTS)]
    ) = Field(description=_INPUT_DESCRIPTION)
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


_ERRORS = {
    400: "Invalid request",
    401: "Missing or invalid API key",
    404: "No such model (or not one this key may use)",
    413: "Request body too large",
    429: "Rate limit exceeded",
    502: "Upstream failure",
    503: "Model unavailable, or every route cooling down",
    504: "Upstream timeout",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"description": _ERRORS[s], "model": ErrorResponse} for s in statuses}


class ModelBrief(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelBrief]


class Pricing(BaseModel):
    per_million_tokens: float
    currency: Literal["USD"]


class ModelDetail(ModelBrief):
    name: str
    description: str
    dimensions: int
    supports_dimensions: bool
    max_tokens: int
    pricing: Pricing


class ModelDetailList(BaseModel):
    object: Literal["list"]
    data: list[ModelDetail]


EMBEDDINGS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Embeddings, in input order", "model": EmbeddingResponse},
    **error_responses(400, 401, 413, 429, 502, 503, 504),
}
MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Models this gateway can serve now", "model": ModelList},
    **error_responses(401, 429),
}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "One model this key may use", "model": ModelBrief},
    **error_responses(401, 404, 429),
}
MODEL_DETAILS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Models with dimensions and pricing", "model": ModelDetailList},
    **error_responses(401, 429),
}
USAGE_RESPONSES = error_responses(400, 401, 429)
