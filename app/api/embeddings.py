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
        result = await gateway.embedder.embed(
            job, gateway.settings.REQUEST_TIMEOUT_SECONDS, read_cache=_may_read_cache(request)
        )
    finally:
        trail.providers, trail.upstream_seconds = job.trace.providers, job.trace.seconds
    trail.prompt_tokens, trail.upstream_tokens = result.prompt_tokens, result.upstream_tokens
    body = embeddings_body(job.model.id, result.vectors, job.want_base64, result.prompt_tokens)
    gateway.usage.record(
        caller.key_id,
        job.model.id,
        input_tokens=result.prompt_tokens,
        upstream_tokens=result.upstream_tokens,
        cached_tokens=result.cached_tokens,
        price_per_million=job.model.config.pricing.per_million_tokens,
    )
    headers = {"x-cache": result.cache_status.value} if result.cache_status else None
    return JSONBytesResponse(body, headers=headers)


def _may_read_cache(request: Request) -> bool:
    """`Cache-Control: no-cache` skips reading the cache; the fresh vectors still refresh it."""
    return "no-cache" not in request.headers.get("cache-control", "").lower()
