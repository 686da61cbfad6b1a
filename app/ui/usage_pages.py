"""The Usage page and its CSV: spend and tokens per day by key, team or model.

The same source and date rules as `GET /admin/v1/usage` (the usage ledger, `report_range`),
kept per day rather than summed over the range, so it can be charted.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from starlette.responses import Response

from app.api.admin import report_range
from app.api.errors import GatewayError, gateway_error
from app.errors import DomainError
from app.keys.model import ApiKeyRecord
from app.state.usage_ledger import FIGURES
from app.ui.charts import bar_chart
from app.ui.console import Console
from app.ui.web import Context, render

GROUPS = ("key", "team", "model")
CSV_COLUMNS = ("date", "group", "name", "team", *FIGURES)


async def daily_rows(
    console: Console, start: str | None, end: str | None, group_by: str
) -> tuple[str, str, list[dict[str, Any]]]:
    """The report's rows; a GatewayError (a 400 for bad dates, a 503 when the books cannot be
    read whole in time: never a silently empty page or CSV)."""
    first, last = report_range(start, end)
    services = console.services
    try:
        rows = await services.usage.report(None, first, last)
    except DomainError as exc:
        raise gateway_error(exc) from None
    records: dict[str, ApiKeyRecord] = {}
    if services.keys is not None:
        records = {r.id: r for r in await services.keys.list()}
    groups: dict[tuple[str, str | None], dict[str, Any]] = defaultdict(
        lambda: dict.fromkeys(FIGURES, 0)
    )
    for row in rows:
        record = records.get(row.key_id)
        if group_by == "team":
            group = record.team if record is not None else None
        else:
            group = row.model if group_by == "model" else row.key_id
        figures = groups[(row.date, group)]
        for figure in FIGURES:
            figures[figure] += getattr(row, figure)
    out = []
    for (day, group), figures in sorted(
        groups.items(), key=lambda item: (item[0][0], str(item[0][1]))
    ):
        record = records.get(str(group)) if group_by == "key" else None
        out.append(
            {
                "date": day,
                "group": group,
                "name": record.name if record else None,
                "team": record.team if record else None,
                **figures,
                "cost_usd": round(figures["cost_usd"], 10),
            }
        )
    return first.isoformat(), last.isoformat(), out


def _group_by(ctx: Context) -> str:
    chosen = ctx.request.query_params.get("group_by", "key")
    return chosen if chosen in GROUPS else "key"


async def usage(console: Console, ctx: Context) -> Response:
    params = ctx.request.query_params
    group_by = _group_by(ctx)
    try:
        start, end, rows = await daily_rows(
            console, params.get("start"), params.get("end"), group_by
        )
    except GatewayError as exc:
        return render(ctx.request, "usage.html", ctx.session, exc.status, error=exc.message,
                      rows=[], group_by=group_by, groups=GROUPS, start=params.get("start", ""),
                      end=params.get("end", ""), chart=None, totals=None)  # fmt: skip
    days: dict[str, float] = defaultdict(float)
    for row in rows:
        days[row["date"]] += row["cost_usd"]
    totals = {figure: sum(row[figure] for row in rows) for figure in FIGURES}
    chart = bar_chart("Spend per day (USD)", list(days), list(days.values())) if days else None
    return render(
        ctx.request,
        "usage.html",
        ctx.session,
        rows=rows,
        group_by=group_by,
        groups=GROUPS,
        start=start,
        end=end,
        chart=chart,
        totals=totals,
    )


async def usage_csv(console: Console, ctx: Context) -> Response:
    params = ctx.request.query_params
    group_by = _group_by(ctx)
    try:
        start, end, rows = await daily_rows(
            console, params.get("start"), params.get("end"), group_by
        )
    except GatewayError as exc:
        return Response(exc.message + "\n", status_code=exc.status, media_type="text/plain")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        # A cell starting with = + - @ would be a formula in a spreadsheet: quote it as text.
        writer.writerow({k: _cell(v) for k, v in row.items()})
    filename = f"usage-{group_by}-{start}-{end}.csv"
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
