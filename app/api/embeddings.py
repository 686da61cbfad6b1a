"""POST /embeddings: authenticate → limit → validate → route → call upstream → encode → respond."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app import metrics
from app.api.admission import admit
from app.api.middleware import request_id
from app.api.record import record
from app.api.responses import JSONBytesResponse, embeddings_body
from app.api.schemas import EMBEDDINGS_OPENAPI, EMBEDDINGS_RESPONSES
from app.api.validation import parse_embedding_request
from app.errors import GatewayError
from app.gateway import Gateway

router = APIRouter()


@router.post(
    "/embeddings",
    openapi_extra=EMBEDDINGS_OPENAPI,
    responses=EMBEDDINGS_RESPONSES,
    summary="Create embeddings",
)
async def create_embeddings(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    trail = record(request.scope)
    caller = gateway.auth.authenticate(request.headers, required=True)
    await admit(request, gateway, caller)
    try:
        job = parse_embedding_request(
            await request.body(), gateway.registry, request_id(request.scope)
        )
    except GatewayError as error:
        if error.code == "model_not_found":
            trail.model = metrics.UNKNOWN  # one label for every unknown ID: bounded cardinality
        raise
    trail.model = job.model.id
    try:
        result = await gateway.router.embed(job, gateway.settings.REQUEST_TIMEOUT_SECONDS)
    finally:
        trail.providers, trail.upstream_seconds = job.trace.providers, job.trace.seconds
    prompt_tokens = (
        result.upstream_tokens if result.upstream_tokens is not None else job.prompt_tokens()
    )
    trail.prompt_tokens, trail.upstream_tokens = prompt_tokens, result.upstream_tokens
    body = embeddings_body(job.model.id, result.vectors, job.want_base64, prompt_tokens)
    return JSONBytesResponse(body)
