"""The Keys page: list, filter, create, edit, disable, rotate, revoke.

Every change goes through `ManagedKeys` (app/keys/service.py), the code under the admin API and
the CLI, and forms are validated by the same `KeyPolicy` / `KeyUpdate` models: the same rules,
the same messages, the same audit lines (actor `console:admin_…`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from app.api.admin import MAX_GRACE_SECONDS
from app.api.errors import GatewayError
from app.keys.model import KeyPolicy, KeyUpdate
from app.keys.service import ManagedKeys, UnknownKey
from app.ui.console import Console
from app.ui.errors import ACTION_ERRORS, as_http_error
from app.ui.web import Context, render

POLICY_FIELDS = (
    "name",
    "team",
    "models",
    "rate_limit_per_second",
    "tokens_per_minute",
    "budget_usd",
    "budget_period",
    "expires_at",
    "metadata",
    "priority",
)


def _keys(console: Console) -> ManagedKeys:
    keys = console.services.keys
    assert keys is not None  # an admin token always gives the gateway a key store
    return keys


def form_fields(form: dict[str, str], *, blank_clears: bool) -> dict[str, Any]:
    """The policy fields a form filled in, as the admin API's JSON would carry them.

    On create a blank field is left out (the default applies); on edit it clears the field.
    """
    out: dict[str, Any] = {}
    for name in POLICY_FIELDS:
        if name not in form:
            continue
        raw = form[name].strip()
        if name == "metadata":
            pairs = [line.partition("=") for line in raw.splitlines() if line.strip()]
            if pairs or blank_clears:
                out[name] = {k.strip(): v.strip() for k, _, v in pairs}
        elif name == "models":
            if raw or blank_clears:
                out[name] = [m.strip() for m in raw.split(",") if m.strip()] or None
        elif raw:
            out[name] = raw
        elif blank_clears and name not in ("budget_period", "priority"):
            out[name] = None
    return out


def _problem(exc: ValidationError) -> str:
    """The first problem, as the admin API's 400 states it (field, then message)."""
    errors = exc.errors()
    if not errors:
        return "invalid value"
    where = ".".join(str(part) for part in errors[0]["loc"])
    message = errors[0]["msg"]
    return f"{where}: {message}" if where else message


async def list_page(
    console: Console, ctx: Context, *, status: int = 200, **values: Any
) -> Response:
    team = ctx.request.query_params.get("team") or None
    records = await _keys(console).list(team=team)
    teams = sorted({r.team for r in await _keys(console).list() if r.team})
    return render(
        ctx.request,
        "keys.html",
        ctx.session,
        status,
        records=records,
        team=team,
        teams=teams,
        models=sorted(console.services.registry.models),
        **values,
    )


async def create(console: Console, ctx: Context) -> Response:
    try:
        policy = KeyPolicy.model_validate(form_fields(ctx.form, blank_clears=False))
        record, secret = await _keys(console).create(policy, console.actor)
    except ValidationError as exc:
        return await list_page(console, ctx, status=400, error=_problem(exc), form=ctx.form)
    except ACTION_ERRORS as caught:
        error = as_http_error(caught)
        return await list_page(
            console, ctx, status=error.status, error=error.message, form=ctx.form
        )
    # The only page that ever shows this secret; it is not stored, so a reload cannot show it.
    return render(ctx.request, "secret.html", ctx.session, record=record, secret=secret)


async def detail(console: Console, ctx: Context, *, status: int = 200, **values: Any) -> Response:
    keys = _keys(console)
    key_id = ctx.request.path_params["key_id"]
    try:
        record = await keys.get(key_id)
    except UnknownKey:
        return render(
            ctx.request,
            "message.html",
            ctx.session,
            404,
            message=f"No API key has the id '{key_id}'.",
        )
    described = await keys.describe(record)
    return render(
        ctx.request,
        "key.html",
        ctx.session,
        status,
        record=record,
        spend=described["spend_usd"],
        remaining=described["budget_remaining_usd"],
        **values,
    )


async def change(console: Console, ctx: Context) -> Response:
    """POST /ui/keys/{id}/{action}: edit, disable, enable, rotate or revoke."""
    keys = _keys(console)
    key_id = ctx.request.path_params["key_id"]
    action = ctx.request.path_params["action"]
    try:
        await keys.get(key_id)
        if action == "edit":
            update = KeyUpdate.model_validate(form_fields(ctx.form, blank_clears=True))
            await keys.update(key_id, update, console.actor)
        elif action in ("disable", "enable"):
            update = KeyUpdate(disabled=action == "disable")
            await keys.update(key_id, update, console.actor)
        elif action == "rotate":
            grace = float(ctx.form.get("grace_seconds") or 0)
            if not 0 <= grace <= MAX_GRACE_SECONDS:
                raise GatewayError(400, f"grace_seconds must be 0 to {MAX_GRACE_SECONDS}.")
            record, secret = await keys.rotate(key_id, grace, console.actor)
            return render(ctx.request, "secret.html", ctx.session, record=record, secret=secret)
        elif action == "revoke":
            await keys.revoke(key_id, console.actor)
        else:
            return render(ctx.request, "message.html", ctx.session, 404, message="No such action.")
    except UnknownKey:
        return render(
            ctx.request,
            "message.html",
            ctx.session,
            404,
            message=f"No API key has the id '{key_id}'.",
        )
    except ValidationError as exc:
        return await detail(console, ctx, status=400, error=_problem(exc))
    except ValueError:
        return await detail(console, ctx, status=400, error="grace_seconds must be a number.")
    except ACTION_ERRORS as caught:
        error = as_http_error(caught)
        return await detail(console, ctx, status=error.status, error=error.message)
    return RedirectResponse(f"/ui/keys/{key_id}", status_code=303)
