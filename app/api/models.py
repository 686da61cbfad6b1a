"""Model lists: NanoGPT's detailed /embedding-models, and OpenAI's /models for the SDKs.
Each shows only the models the calling key may use; /models/{id} answers for one of them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admission import authenticate
from app.api.context import lifespan_state
from app.api.errors import GatewayError
from app.api.responses import json_response
from app.api.schemas import MODEL_DETAILS_RESPONSES, MODEL_RESPONSES, MODELS_RESPONSES
from app.auth.callers import Caller
from app.config.registry import Model
from app.runtime.services import Services

router = APIRouter()


@router.get(
    "/embedding-models",
    summary="List embedding models with details",
    responses=MODEL_DETAILS_RESPONSES,
)
async def list_embedding_models(request: Request) -> Response:
    services = lifespan_state(request.scope)["services"]
    caller = await authenticate(request.scope, services, request.headers, required=False)
    return json_response(
        {"object": "list", "data": [_detailed(m) for m in _usable(services, caller)]}
    )


@router.get("/models", summary="List models (OpenAI shape)", responses=MODELS_RESPONSES)
async def list_models(request: Request) -> Response:
    services = lifespan_state(request.scope)["services"]
    caller = await authenticate(request.scope, services, request.headers, required=False)
    return json_response({"object": "list", "data": [_brief(m) for m in _usable(services, caller)]})


@router.get(
    "/models/{model_id:path}", summary="Retrieve a model (OpenAI shape)", responses=MODEL_RESPONSES
)
async def retrieve_model(model_id: str, request: Request) -> Response:
    services = lifespan_state(request.scope)["services"]
    caller = await authenticate(request.scope, services, request.headers, required=False)
    model = services.registry.get(model_id)
    if model is None or not model.available or not caller.policy.allows(model_id):
        # The same answer for a model that does not exist, cannot be served, or is not this
        # key's to use: a key cannot probe what the gateway has.
        raise GatewayError(
            404,
            f"The model '{model_id}' does not exist",
            param="model",
            code="model_not_found",
        )
    return json_response(_brief(model))


def _usable(services: Services, caller: Caller) -> list[Model]:
    allows = caller.policy.allows
    return [m for m in services.registry.available() if allows(m.id)]


def _brief(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.config.owned_by,
    }


def _detailed(model: Model) -> dict[str, Any]:
    config = model.config
    return {
        **_brief(model),
        "name": config.name,
        "description": config.description,
        "dimensions": config.dimensions,
        "supports_dimensions": config.supports_dimensions,
        "max_tokens": config.max_tokens,
        "pricing": {
            "per_million_tokens": config.pricing.per_million_tokens,
            "currency": config.pricing.currency,
        },
    }
