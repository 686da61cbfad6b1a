"""/admin/v1: managed keys and usage reports, for the holder of GATEWAY_ADMIN_TOKEN only.

Mounted only when the token is set. A client key never works here, whatever it is allowed
elsewhere. Every call is an audit line naming the admin token by its hash id, never by value.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from app.api.admission import presented_key
from app.api.client_ip import client_ip
from app.api.context import lifespan_state, request_context
from app.api.errors import AUTHENTICATION, NOT_FOUND, GatewayError, invalid_request
from app.api.responses import json_response
from app.config.registry import RegistryError
from app.keys.model import ApiKeyRecord, KeyPolicy, KeyUpdate
from app.keys.service import ManagedKeys, UnknownKey, audit, audit_log
from app.state.usage_ledger import FIGURES, UsageRow, today

router = APIRouter()

MAX_DAYS = 366
MAX_GRACE_SECONDS = 30 * 86_400


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(default=0, ge=0, le=MAX_GRACE_SECONDS)


def admin_id(token: str) -> str:
    """How audit lines name an admin token: a short hash, like client keys' ids."""
    return "admin_" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


async def admin_actor(request: Request) -> str:
    """The caller's admin id, or a 401. Wrong tokens count against the client IP like the
    API's and the console's failed sign-ins (`AuthFailureThrottle`): past the limit the IP gets
    429s, before its token is even compared, and no audit line each (the log stays bounded:
    at most AUTH_FAILURES_PER_MINUTE refusals per IP and minute are written)."""
    services = lifespan_state(request.scope)["services"]
    expected = services.settings.GATEWAY_ADMIN_TOKEN
    presented = presented_key(request.headers)
    assert expected is not None  # the router is mounted only with a token
    ip = client_ip(request.scope, services.settings.TRUSTED_PROXIES)
    context = request_context(request.scope)
    context.client_ip = ip
    throttle = services.auth_failures
    if throttle is not None:
        throttle.check(ip)
    if presented is None or not hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(),
        hashlib.sha256(expected.get_secret_value().encode()).digest(),
    ):
        audit_log.warning(
            "admin call refused",
            extra={
                "audit": True,
                "actor": admin_id(presented) if presented else None,  # a hash, never the token
                "action": "denied",
                "path": request.url.path,
                "client_ip": ip,
            },
        )
        if throttle is not None:
            await throttle.failed(ip)  # one too many: a 429 instead of the 401
        raise GatewayError(
            401,
            "The admin API takes 'Authorization: Bearer <GATEWAY_ADMIN_TOKEN>'.",
            type=AUTHENTICATION,
            code="invalid_admin_token",
        )
    return admin_id(presented)


def _keys(request: Request) -> ManagedKeys:
    keys = lifespan_state(request.scope)["services"].keys
    assert keys is not None  # an admin token always gives the gateway a key store
    return keys


async def _record(keys: ManagedKeys, key_id: str) -> ApiKeyRecord:
    try:
        return await keys.get(key_id)
    except UnknownKey:
        raise GatewayError(
            404, f"No API key has the id '{key_id}'.", type=NOT_FOUND, code="key_not_found"
        ) from None


@router.post("/keys", status_code=201)
async def create_key(
    request: Request, policy: KeyPolicy, actor: str = Depends(admin_actor)
) -> Response:
    record, secret = await _keys(request).create(policy, actor)
    # The only response that ever carries this secret.
    return json_response({"id": record.id, "key": secret, **record.public()}, status=201)


@router.get("/keys")
async def list_keys(
    request: Request,
    team: str | None = None,
    name: str | None = None,
    actor: str = Depends(admin_actor),
) -> Response:
    records = await _keys(request).list(team=team, name=name)
    audit(actor, "list", "*", [])
    return json_response({"object": "list", "data": [r.public() for r in records]})


@router.get("/keys/{key_id}")
async def show_key(request: Request, key_id: str, actor: str = Depends(admin_actor)) -> Response:
    keys = _keys(request)
    record = await _record(keys, key_id)
    audit(actor, "show", key_id, [])
    return json_response(await keys.describe(record))


@router.patch("/keys/{key_id}")
async def update_key(
    request: Request, key_id: str, change: KeyUpdate, actor: str = Depends(admin_actor)
) -> Response:
    keys = _keys(request)
    await _record(keys, key_id)
    return json_response(await keys.describe(await keys.update(key_id, change, actor)))


@router.post("/keys/{key_id}/rotate")
async def rotate_key(
    request: Request,
    key_id: str,
    body: RotateRequest | None = None,
    actor: str = Depends(admin_actor),
) -> Response:
    keys = _keys(request)
    await _record(keys, key_id)
    grace = body.grace_seconds if body is not None else 0.0
    record, secret = await keys.rotate(key_id, grace, actor)
    return json_response({"id": record.id, "key": secret, **record.public()})


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str, actor: str = Depends(admin_actor)) -> Response:
    keys = _keys(request)
    await _record(keys, key_id)
    return json_response((await keys.revoke(key_id, actor)).public())


@router.get("/usage")
async def usage_report(
    request: Request,
    start: str | None = None,
    end: str | None = None,
    group_by: Literal["key", "team", "model"] = Query(default="key"),
    actor: str = Depends(admin_actor),
) -> Response:
    first, last = report_range(start, end)
    services = lifespan_state(request.scope)["services"]
    rows = await services.usage.report(None, first, last)
    records = {r.id: r for r in await _keys(request).list()}
    audit(actor, "usage", "*", [], group_by=group_by)
    return json_response(
        {
            "object": "usage",
            "start": first.isoformat(),
            "end": last.isoformat(),
            "group_by": group_by,
            "data": _grouped(rows, group_by, records),
        }
    )


def report_range(start: str | None, end: str | None) -> tuple[date, date]:
    """The days a usage report covers (the console's Usage page asks with the same rules)."""
    first = _day(start, "start", default=today())
    last = _day(end, "end", default=max(first, today()))
    if last < first:
        raise invalid_request("'end' must not be before 'start'.", param="end")
    if (last - first).days >= MAX_DAYS:
        raise invalid_request(f"Ask for at most {MAX_DAYS} days at a time.", param="start")
    return first, last


def _grouped(
    rows: list[UsageRow], group_by: str, records: dict[str, ApiKeyRecord]
) -> list[dict[str, Any]]:
    groups: dict[str | None, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0))
    for row in rows:
        record = records.get(row.key_id)
        group = {"key": row.key_id, "model": row.model}.get(group_by)
        if group_by == "team":
            group = record.team if record is not None else None
        figures = groups[group]
        for figure in FIGURES:
            figures[figure] += getattr(row, figure)
    out = []
    for group, figures in sorted(groups.items(), key=lambda item: str(item[0])):
        entry: dict[str, Any] = {group_by: group, **figures}
        entry["cost_usd"] = round(entry["cost_usd"], 10)
        if group_by == "key":
            record = records.get(str(group))
            entry["name"] = record.name if record else None
            entry["team"] = record.team if record else None
        out.append(entry)
    return out


def _day(value: str | None, param: str, *, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid_request(f"'{param}' must be a date like 2026-01-31.", param=param) from None


@router.post("/reload")
async def reload_registry(request: Request, actor: str = Depends(admin_actor)) -> Response:
    """Re-read the registry on every worker (docs/operations.md, "Reload"); refused as at
    start-up."""
    lifecycle = lifespan_state(request.scope)["lifecycle"]
    try:
        result = await lifecycle.reload_everywhere()
    except RegistryError as exc:
        audit(actor, "reload", "*", [], outcome="refused")
        raise invalid_request(
            f"configuration error: {exc}", param="MODELS_CONFIG", code="invalid_registry"
        ) from None
    audit(actor, "reload", "*", [], outcome="reloaded")
    return json_response(
        {
            "status": "reloaded",
            "models": result.models,
            "routes_kept": result.routes_kept,
            "routes_new": result.routes_new,
        }
    )
