"""POST /embeddings: authenticate → limit → validate → route → call upstream → encode → respond."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admission import admit
from app.api.middleware import request_id
from app.api.responses import JSONBytesResponse, embeddings_body
from app.api.schemas import EMBEDDINGS_OPENAPI
from app.api.validation import parse_embedding_request
from app.gateway import Gateway

router = APIRouter()


@router.post("/embeddings", openapi_extra=EMBEDDINGS_OPENAPI, summary="Create embeddings")
async def create_embeddings(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    caller = gateway.auth.authenticate(request.headers, required=True)
    await admit(request, gateway, caller)
    job = parse_embedding_request(await request.body(), gateway.registry, request_id(request.scope))
    result = await gateway.router.embed(job, gateway.settings.REQUEST_TIMEOUT_SECONDS)
    prompt_tokens = (
        result.upstream_tokens if result.upstream_tokens is not None else job.prompt_tokens()
    )
    body = embeddings_body(job.model.id, result.vectors, job.want_base64, prompt_tokens)
    return JSONBytesResponse(body)
