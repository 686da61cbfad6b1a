"""/admin/v1/batches: every key's batches, for the holder of GATEWAY_ADMIN_TOKEN: list, show and
cancel any of them. Mounted with the admin API (app/api/admin.py), only when the token is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from app.api.admin import admin_actor
from app.api.batches import DEFAULT_LIST
from app.api.context import lifespan_state
from app.api.files import page
from app.api.responses import json_response
from app.batches.service import MAX_LIST, Batches
from app.batches.store import StoredBatch
from app.keys.service import audit

router = APIRouter()


def _batches(request: Request) -> Batches:
    return lifespan_state(request.scope)["services"].batches


def _described(batches: Batches, stored: StoredBatch) -> dict[str, object]:
    """OpenAI's Batch object, plus whose it is and what it has cost so far."""
    counters = stored.counters
    return {
        **batches.public(stored),
        "owner": stored.record.owner,
        "spend_usd": round(counters.spend_usd, 10),
        "upstream_tokens": counters.upstream_tokens,
    }


@router.get("/batches")
async def list_batches(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=DEFAULT_LIST, ge=1, le=MAX_LIST),
    actor: str = Depends(admin_actor),
) -> Response:
    batches = _batches(request)
    found, has_more = await batches.list(None, after, limit)
    audit(actor, "list_batches", "*", [])
    return json_response(page([_described(batches, b) for b in found], has_more))


@router.get("/batches/{batch_id}")
async def show_batch(
    request: Request, batch_id: str, actor: str = Depends(admin_actor)
) -> Response:
    batches = _batches(request)
    stored = await batches.get(None, batch_id)
    audit(actor, "show_batch", batch_id, [])
    return json_response(_described(batches, stored))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(
    request: Request, batch_id: str, actor: str = Depends(admin_actor)
) -> Response:
    batches = _batches(request)
    stored = await batches.cancel(None, batch_id, actor)
    audit(actor, "cancel_batch", batch_id, [])
    return json_response(_described(batches, stored))
