"""Charts as server-drawn SVG: no chart library to vendor, no script, nothing for the CSP to allow.

A chart is a few polylines or bars and their labels; drawing it here keeps the page readable
with JavaScript off, in a screenshot and in a test, and every label goes through the same
escaping as the rest of the page (markupsafe).
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 160
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 22
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _frame(title: str, top: float, x_labels: tuple[str, str], body: list[str]) -> Markup:
    plot_bottom = HEIGHT - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>',
        f'<line x1="{LEFT}" y1="{plot_bottom}" x2="{WIDTH - RIGHT}" y2="{plot_bottom}" '
        'stroke="#9ca3af"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}" stroke="#9ca3af"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end" font-size="10">'
        f"{escape(_fmt(top))}</text>",
        f'<text x="{LEFT - 4}" y="{plot_bottom}" text-anchor="end" font-size="10">0</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="10">{escape(x_labels[0])}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end" font-size="10">'
        f"{escape(x_labels[1])}</text>",
        *body,
        "</svg>",
    ]
    return Markup("".join(parts))


def line_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[float | None]]],
    x_labels: tuple[str, str],
) -> Markup:
    """One line per (name, values); a None value breaks the line (no data that minute)."""
    values = [v for _, points in series for v in points if v is not None]
    top = max(values, default=0.0) or 1.0
    count = max((len(points) for _, points in series), default=1)
    step = (WIDTH - LEFT - RIGHT) / max(1, count - 1)
    height = HEIGHT - TOP - BOTTOM
    body: list[str] = []
    for number, (name, points) in enumerate(series):
        colour = COLOURS[number % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for index, value in enumerate(points):
            if value is None:
                runs.append([])
                continue
            x = LEFT + index * step
            y = TOP + height * (1 - value / top)
            runs[-1].append(f"{x:.1f},{y:.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                body.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            elif run:
                body.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                    f'points="{" ".join(run)}"/>'
                )
        body.append(
            f'<text x="{LEFT + 8 + 150 * number}" y="{TOP + 10}" font-size="10" '
            f'fill="{colour}">{escape(name)}</text>'
        )
    return _frame(title, top, x_labels, body)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float]) -> Markup:
    top = max(values, default=0.0) or 1.0
    count = max(1, len(values))
    slot = (WIDTH - LEFT - RIGHT) / count
    height = HEIGHT - TOP - BOTTOM
    body: list[str] = []
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        bar = height * value / top
        x = LEFT + index * slot + slot * 0.15
        body.append(
            f'<rect x="{x:.1f}" y="{TOP + height - bar:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{bar:.1f}" fill="{COLOURS[0]}"><title>{escape(label)}: '
            f"{escape(_fmt(value))}</title></rect>"
        )
    first = labels[0] if labels else ""
    last = labels[-1] if labels else ""
    return _frame(title, top, (first, last), body)
