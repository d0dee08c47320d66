"""Ops dashboard in the admin: traffic, errors (refused requests apart from failures), tokens, cost and time
to first byte per provider and model, top keys, provider health, the response cache's hits and savings per
model and per team, over the last hour or day, and the month's spend per team. Costs are shown exactly, as
decimal strings in GATEWAY_CURRENCY. Charts are inline SVG built here, so the page needs nothing from the
internet."""

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from accounts.budgets import money
from accounts.cache_report import cache_by_model, cache_by_team, cache_window_summary
from accounts.selectors import DASHBOARD_WINDOWS, dashboard_data
from providers.health import providers_health_overview

CHART_WIDTH = 640
_LABEL_WIDTH = 170
_VALUE_WIDTH = 90
_BAR_HEIGHT = 14
_GROUP_GAP = 10
# Half the width of a time label ("HH:MM", 11 px text, dashboard.css) with room to spare: a label whose
# centre is closer than this to the right edge is drawn right-aligned to it instead of cut off.
_TICK_HALF_WIDTH = 18
_WINDOW_LABELS = {"1h": "Last hour", "24h": "Last 24 hours"}
NO_TEAM = "(no team)"


def _cache_rows(rows: list[dict]) -> list[dict]:
    """Response cache rows with their amounts and ratios as text (amounts exact, in GATEWAY_CURRENCY)."""
    for row in rows:
        row["saved_text"] = money(row["saved"])
        row["ratio_text"] = f"{row['ratio']}%" if row["ratio"] is not None else "-"
    return rows


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def hbar_chart(rows: list[dict], *, series: list[tuple[str, str, str]], label: str = "name") -> dict:
    """Horizontal grouped bars: one group per row, one bar per (field, legend, css class) in series."""
    bar_area = CHART_WIDTH - _LABEL_WIDTH - _VALUE_WIDTH
    group_height = _BAR_HEIGHT * len(series) + _GROUP_GAP
    peak = max((row[field] or 0 for row in rows for field, _, _ in series), default=0) or 1
    groups = []
    for index, row in enumerate(rows):
        top = index * group_height + _GROUP_GAP // 2
        bars = []
        for position, (field, legend, css) in enumerate(series):
            value = row[field]
            width = round(bar_area * (value or 0) / peak, 1)
            bars.append(
                {
                    "y": top + position * _BAR_HEIGHT,
                    "width": width,
                    "text_x": _LABEL_WIDTH + width + 4,
                    "text_y": top + position * _BAR_HEIGHT + _BAR_HEIGHT - 3,
                    "text": _number(value),
                    "legend": legend,
                    "css": css,
                }
            )
        groups.append(
            {"label": row[label] or "(none)", "label_y": top + len(series) * _BAR_HEIGHT / 2 + 4, "bars": bars}
        )
    return {
        "width": CHART_WIDTH,
        "height": max(len(rows) * group_height, group_height),
        "label_width": _LABEL_WIDTH,
        "bar_height": _BAR_HEIGHT - 2,
        "groups": groups,
        "legend": [(legend, css) for _, legend, css in series],
    }


def _tick_position(center: float) -> tuple[float, str]:
    """x and text-anchor of a time label centred under its bar, kept inside the chart's width."""
    if center + _TICK_HALF_WIDTH > CHART_WIDTH:
        return CHART_WIDTH, "end"
    return round(center, 2), "middle"


def timeseries_chart(points: list[dict], *, bucket: str) -> dict:
    """Vertical bars of requests per bucket: each bar is the bucket's requests, its errors the part of
    it that stands on the axis, the successes stacked above them."""
    left, top, bottom = 44, 10, 22
    height = 190
    plot_height = height - top - bottom
    baseline = top + plot_height
    slot = (CHART_WIDTH - left) / max(len(points), 1)
    peak = max((point["requests"] for point in points), default=0) or 1
    every = max(1, round(len(points) / 6))
    bars = []
    for index, point in enumerate(points):
        x = left + index * slot
        # Rounded edges, not rounded heights: the two parts meet exactly and the bar ends on the axis.
        bar_top = round(baseline - plot_height * point["requests"] / peak, 2)
        error_top = round(baseline - plot_height * point["errors"] / peak, 2)
        label = point["start"].strftime("%H:%M")
        tick_x, tick_anchor = _tick_position(x + slot / 2)
        bars.append(
            {
                "x": round(x + slot * 0.1, 2),
                "width": round(max(slot * 0.8, 1), 2),
                "ok_y": bar_top,
                "ok_height": round(error_top - bar_top, 2),
                "error_y": error_top,
                "error_height": round(baseline - error_top, 2),
                "title": f"{label} UTC: {point['requests']} requests, {point['errors']} errors",
                "tick": label if index % every == 0 else "",
                "tick_x": tick_x,
                "tick_anchor": tick_anchor,
            }
        )
    return {
        "width": CHART_WIDTH,
        "height": height,
        "left": left,
        "baseline": baseline,
        "top": top,
        "peak": peak,
        "tick_y": height - 6,
        "bars": bars,
        "unit": "minute" if bucket == "minute" else "hour",
    }


def _breakdown_charts(rows: list[dict]) -> list[tuple[str, dict]]:
    return [
        ("Requests", hbar_chart(rows, series=[("requests", "requests", "bar-req"), ("errors", "errors", "bar-err")])),
        (
            "Tokens",
            hbar_chart(
                rows,
                series=[("prompt_tokens", "prompt", "bar-prompt"), ("completion_tokens", "completion", "bar-compl")],
            ),
        ),
        (
            "Time to first byte (ms)",
            hbar_chart(rows, series=[("ttfb_p50_ms", "p50", "bar-p50"), ("ttfb_p95_ms", "p95", "bar-p95")]),
        ),
    ]


@staff_member_required
def dashboard(request):
    window = request.GET.get("window", "1h")
    if window not in DASHBOARD_WINDOWS:
        window = "1h"
    data = dashboard_data(window=window)
    for row in data["top_keys"]:
        row["label"] = f"{row['key_name']} ({row['key_prefix']}...)"
    summary = data["summary"]
    # Errors = refused (4xx) + failed (5xx: the gateway or a provider).
    summary["failed"] = summary["errors"] - summary["refused"]
    for row in data["team_spend"]:
        row["team"] = row["team_name"] if row["team_id"] is not None else NO_TEAM
    for rows in ([summary], data["providers"], data["models"], data["endpoints"], data["top_keys"], data["team_spend"]):
        for row in rows:
            row["cost_text"] = money(row["cost"])
    since = data["since"]
    cache_teams = cache_by_team(since=since)
    for row in cache_teams:
        row["team"] = row["team_name"] if row["team_id"] is not None else NO_TEAM
    response_cache = {
        "summary": _cache_rows([cache_window_summary(since=since)])[0],
        "models": _cache_rows(cache_by_model(since=since)),
        "teams": _cache_rows(cache_teams),
    }
    context = {
        **admin.site.each_context(request),
        "response_cache": response_cache,
        "title": "Gateway dashboard",
        "currency": settings.GATEWAY_CURRENCY,
        "window": window,
        "windows": list(_WINDOW_LABELS.items()),
        **data,
        "health": providers_health_overview(),
        "timeseries_chart": timeseries_chart(data["timeseries"], bucket="minute" if window == "1h" else "hour"),
        "sections": [
            {
                "kind": "breakdown",
                "title": "Per provider",
                "rows": data["providers"],
                "charts": _breakdown_charts(data["providers"]),
            },
            {
                "kind": "breakdown",
                "title": "Per model",
                "rows": data["models"],
                "charts": _breakdown_charts(data["models"]),
            },
            {
                "kind": "breakdown",
                "title": "Per endpoint",
                "rows": data["endpoints"],
                "charts": _breakdown_charts(data["endpoints"]),
            },
            {
                "kind": "keys",
                "title": "Top keys by tokens",
                "rows": data["top_keys"],
                "charts": [
                    ("Tokens", hbar_chart(data["top_keys"], series=[("tokens", "tokens", "bar-prompt")], label="label"))
                ],
            },
        ],
    }
    return render(request, "admin/dashboard.html", context)
