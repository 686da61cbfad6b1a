"""POST /embeddings: (limit by IP) → authenticate → validate → apply the key's policy (beside
the cache lookup) → route → call upstream → encode → respond.

The one hot endpoint is a plain ASGI app on a Starlette `Route`, not a FastAPI operation:
FastAPI's per-request machinery (its request wrapper, dependency solving, response handling)
was ~7 % of the gateway's instructions per request, and this endpoint uses none of it. Errors
still reach the app's exception handlers; `openapi_route` documents the endpoint.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app import metrics
from app.api.admission import authenticate
from app.api.context import lifespan_state, request_context
from app.api.middleware import request_id
from app.api.policy import PolicyCheck
from app.api.responses import JSONBytesResponse
from app.api.schemas import EMBEDDINGS_OPENAPI, EMBEDDINGS_RESPONSES
from app.core.embedding_request import parse_embedding_request
from app.core.embedding_response import embeddings_body
from app.core.errors import RoutingError, UnknownModel
from app.core.job import Lane
from app.core.serving import Serving
from app.runtime.services import Services

PATH = "/embeddings"


class CreateEmbeddings:
    """The ASGI app behind POST /embeddings (an object, so Starlette mounts it unwrapped)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        services = lifespan_state(request.scope)["services"]
        # One registry snapshot for the whole request, whatever a reload swaps meanwhile.
        with services.serving.in_use() as serving:
            await _create_embeddings(request, send, services, serving)


async def _create_embeddings(
    request: Request, send: Send, services: Services, serving: Serving
) -> None:
    scope = request.scope
    context = request_context(scope)
    # The per-IP limit has run already (admission.IPLimit), before anything read the request.
    caller = await authenticate(scope, services, request.headers, required=True)
    try:
        job = await parse_embedding_request(
            await request.body(), serving.registry, request_id(scope), caller.policy.allows
        )
    except UnknownModel:
        context.model = metrics.UNKNOWN  # one label for every unknown ID: bounded cardinality
        raise
    context.model = job.model.id
    if caller.policy.priority == "bulk":
        job.lane = Lane.BULK
    policy = PolicyCheck(scope, services, caller, job)
    try:
        result = await serving.embedder.embed(
            job,
            services.settings.REQUEST_TIMEOUT_SECONDS,
            read_cache=_may_read_cache(request),
            admitted=policy.check,
        )
    except BaseException as error:
        await policy.release()
        if isinstance(error, RoutingError) and error.cost is not None:
            context.upstream(error.cost)
        raise
    context.upstream(result.cost)
    await policy.settle(job, result)
    context.prompt_tokens, context.upstream_tokens = result.prompt_tokens, result.upstream_tokens
    body = embeddings_body(job.model.id, result.vectors, job.want_base64, result.prompt_tokens)
    services.usage.record(
        caller.key_id,
        job.model.id,
        input_tokens=result.prompt_tokens,
        upstream_tokens=result.upstream_tokens,
        cached_tokens=result.cached_tokens,
        price_per_million=job.model.config.pricing.per_million_tokens,
    )
    headers = {"x-cache": result.cache_status.value} if result.cache_status else None
    await JSONBytesResponse(body, headers=headers)(scope, request.receive, send)


def _may_read_cache(request: Request) -> bool:
    """`Cache-Control: no-cache` skips reading the cache; the fresh vectors still refresh it."""
    return "no-cache" not in request.headers.get("cache-control", "").lower()


def route(prefix: str) -> Route:
    return Route(prefix + PATH, CreateEmbeddings(), methods=["POST"])


async def create_embeddings() -> None:
    """Documentation only: requests go to `CreateEmbeddings`."""


def openapi_route(prefix: str) -> APIRoute:
    """How /openapi.json describes the endpoint; never mounted, so it never serves a request."""
    return APIRoute(
        prefix + PATH,
        create_embeddings,
        methods=["POST"],
        summary="Create embeddings",
        openapi_extra=EMBEDDINGS_OPENAPI,
        responses=EMBEDDINGS_RESPONSES,
    )
