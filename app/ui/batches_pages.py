"""The Batches page: every key's batches with their progress (lines done and failed, tokens,
spend, rate, ETA), a cancel button, and links to their files.

Through the same service as the Batch API and `/admin/v1/batches` (app/batches/service.py): the
console is the admin's view, so it sees and cancels every key's batches (actor
`console:admin_…` in the audit line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.responses import RedirectResponse, Response, StreamingResponse

from app.api.files import content_response
from app.batches.records import ACTIVE
from app.batches.store import StoredBatch
from app.keys.service import audit
from app.ui.console import Console
from app.ui.errors import ACTION_ERRORS, as_http_error
from app.ui.web import Context, render

PAGE = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Row:
    """One batch as the page shows it."""

    batch: dict[str, Any]
    owner: str
    done: int
    percent: float
    spend_usd: float
    rate: float | None  # lines a second since it started
    eta_seconds: float | None
    active: bool


def _row(console: Console, stored: StoredBatch, now: float) -> Row:
    record, counters = stored.record, stored.counters
    done = counters.completed + counters.failed + counters.cancelled
    total = record.total
    rate = eta = None
    if record.in_progress_at is not None and done:
        elapsed = max(now - record.in_progress_at, 1.0)
        rate = done / elapsed
        if record.status in ACTIVE:
            eta = (total - done) / rate
    return Row(
        batch=console.services.batches.public(stored),
        owner=record.owner,
        done=done,
        percent=100.0 * done / total if total else 0.0,
        spend_usd=counters.spend_usd,
        rate=rate,
        eta_seconds=eta,
        active=record.status in ("validating", "in_progress"),
    )


async def batches_page(
    console: Console, ctx: Context, *, status: int = 200, **values: Any
) -> Response:
    batches = console.services.batches
    after = ctx.request.query_params.get("after") or None
    found, has_more = await batches.list(None, after, PAGE)
    now = batches.clock()
    rows = [_row(console, stored, now) for stored in found]
    return render(
        ctx.request,
        "batches.html",
        ctx.session,
        status,
        rows=rows,
        next_after=found[-1].record.id if has_more and found else None,
        **values,
    )


async def cancel(console: Console, ctx: Context) -> Response:
    batch_id = ctx.request.path_params["batch_id"]
    try:
        await console.services.batches.cancel(None, batch_id, console.actor)
        audit(console.actor, "cancel_batch", batch_id, [])
    except ACTION_ERRORS as caught:
        exc = as_http_error(caught)
        return await batches_page(console, ctx, status=exc.status, error=exc.message)
    return RedirectResponse("/ui/batches", status_code=303)


async def file_content(console: Console, ctx: Context) -> Response:
    """A batch's input, output or error file, for the admin (any key's)."""
    file_id = ctx.request.path_params["file_id"]
    try:
        record, stream = await console.services.batches.files.content(None, file_id)
    except ACTION_ERRORS as caught:
        exc = as_http_error(caught)
        return render(ctx.request, "message.html", ctx.session, exc.status, message=exc.message)
    response: StreamingResponse = content_response(record.bytes, stream)
    # The name a client uploaded, reduced to characters that cannot break the header.
    name = _UNSAFE.sub("_", record.filename) or "file.jsonl"
    response.headers["content-disposition"] = f'attachment; filename="{name}"'
    return response
