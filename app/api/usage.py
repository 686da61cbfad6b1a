"""GET /usage: the calling key's usage and spend; every key's with the internal token."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from app.api.admission import authenticate
from app.api.context import lifespan_state
from app.api.errors import invalid_request
from app.api.responses import json_response
from app.api.schemas import USAGE_RESPONSES
from app.state.usage_ledger import ANONYMOUS, today, totals

router = APIRouter()

MAX_DAYS = 366


@router.get("/usage", summary="Usage and spend per key, model and day", responses=USAGE_RESPONSES)
async def get_usage(request: Request) -> Response:
    services = lifespan_state(request.scope)["services"]
    caller = await authenticate(request.scope, services, request.headers, required=True)
    start = _day(request.query_params.get("start"), "start", default=today())
    end = _day(request.query_params.get("end"), "end", default=max(start, today()))
    if end < start:
        raise invalid_request("'end' must not be before 'start'.", param="end")
    if (end - start).days >= MAX_DAYS:
        raise invalid_request(f"Ask for at most {MAX_DAYS} days at a time.", param="start")
    key_id = None if caller.is_internal else (caller.key_id or ANONYMOUS)
    rows = await services.usage.report(key_id, start, end)
    return json_response(
        {
            "object": "usage",
            "start": start.isoformat(),
            "end": end.isoformat(),
            "key_id": key_id,  # None: every key (internal token)
            "data": [asdict(row) for row in rows],
            "total": totals(rows),
        }
    )


def _day(value: str | None, param: str, *, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid_request(f"'{param}' must be a date like 2026-01-31.", param=param) from None
