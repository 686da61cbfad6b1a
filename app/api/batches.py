"""/batches: OpenAI's Batch API for /v1/embeddings, run by the gateway (docs/batches.md).

HTTP only: authenticate, read the request, call app/batches/service.py, answer. The body's
checks are app/batches/params.py's; a batch is created `validating` and the gateway's workers
take it from there (app/batches/runner.py).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from app.api.admission import authenticate
from app.api.context import lifespan_state
from app.api.errors import invalid_request
from app.api.files import page
from app.api.responses import json_response
from app.batches.params import parse_create
from app.batches.service import MAX_LIST, Batches, owner_of

router = APIRouter()

PATH = "/batches"
DEFAULT_LIST = 20


async def _batches_and_owner(request: Request) -> tuple[Batches, str]:
    services = lifespan_state(request.scope)["services"]
    caller = await authenticate(request.scope, services, request.headers, required=True)
    return services.batches, owner_of(caller.key_id)


@router.post(PATH)
async def create_batch(request: Request) -> Response:
    batches, owner = await _batches_and_owner(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. Send a JSON object with "
            "'input_file_id', 'endpoint' and 'completion_window'."
        ) from None
    params = parse_create(body, batches.settings.BATCH_MAX_COMPLETION_WINDOW_SECONDS)
    return json_response(batches.public(await batches.create(owner, params)))


@router.get(PATH)
async def list_batches(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=DEFAULT_LIST, ge=1, le=MAX_LIST),
) -> Response:
    batches, owner = await _batches_and_owner(request)
    found, has_more = await batches.list(owner, after, limit)
    return json_response(page([batches.public(b) for b in found], has_more))


@router.get(PATH + "/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    batches, owner = await _batches_and_owner(request)
    return json_response(batches.public(await batches.get(owner, batch_id)))


@router.post(PATH + "/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    # No body: the Python SDK may still send a JSON content type with nothing in it.
    batches, owner = await _batches_and_owner(request)
    return json_response(batches.public(await batches.cancel(owner, batch_id, owner)))
