"""Spend per day, team, key and model as CSV, for finance and chargeback: read from the daily aggregates
(UsageDaily) with each key's team, costs kept exact (Decimal written as text) in GATEWAY_CURRENCY.

Used by `manage.py export_spend` and by the "Export spend as CSV" admin action on usage daily rows.
"""

import csv
from collections.abc import Iterable, Iterator
from datetime import date
from typing import TextIO

from django.conf import settings
from django.contrib import admin
from django.db.models import F, Max, Min
from django.http import HttpResponse

from accounts.models import Team, UsageDaily

SPEND_COLUMNS = (
    "date",
    "team",
    "key_prefix",
    "key_name",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "currency",
)
# Cells a spreadsheet would run as a formula when the file is opened (OWASP "CSV injection"): names
# are typed by users, so a leading quote keeps them text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_TEXT_COLUMNS = ("team", "key_name", "model")


class SpendExportError(ValueError):
    """An export that cannot run as asked (an unknown team, a range that ends before it starts)."""


def spend_rows(start: date, end: date, team: str | None = None) -> Iterator[dict[str, str | int]]:
    """One row per day, key and model with usage, `start` and `end` inclusive, optionally one team's keys.

    The team is the key's team now: the daily aggregates are kept per key. Raises SpendExportError at
    once (not when iterated) for an unknown team or an end before the start.
    """
    if end < start:
        raise SpendExportError(f"the end date {end.isoformat()} is before the start date {start.isoformat()}")
    daily = UsageDaily.objects.filter(date__gte=start, date__lte=end)
    if team is not None:
        if not Team.objects.filter(name=team).exists():
            raise SpendExportError(f"no team is named '{team}'")
        daily = daily.filter(api_key__team__name=team)
    return spend_rows_of(daily)


def spend_rows_of(daily) -> Iterator[dict[str, str | int]]:
    """The export rows of a UsageDaily queryset (an admin selection, or spend_rows' range)."""
    currency = settings.GATEWAY_CURRENCY
    # Keys without a team first on every database (PostgreSQL would put NULL last).
    team_order = F("api_key__team__name").asc(nulls_first=True)
    rows = daily.order_by("date", team_order, "api_key__prefix", "api_key_id", "model").values_list(
        "date",
        "api_key__team__name",
        "api_key__prefix",
        "api_key__name",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    )
    for day, team, prefix, name, model, requests, errors, prompt, completion, cost in rows.iterator(chunk_size=2000):
        yield {
            "date": day.isoformat(),
            "team": team or "",
            "key_prefix": prefix,
            "key_name": name,
            "model": model,
            "requests": requests,
            "errors": errors,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost": f"{cost:f}",
            "currency": currency,
        }


def spend_csv_write(rows: Iterable[dict], out: TextIO) -> int:
    """Write the header and `rows` as CSV to `out`; returns the number of data rows."""
    writer = csv.DictWriter(out, fieldnames=SPEND_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({**row, **{column: _cell_text(row[column]) for column in _TEXT_COLUMNS}})
        count += 1
    return count


def _cell_text(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


@admin.action(description="Export spend of the selected rows as CSV", permissions=["view"])
def export_spend_csv(modeladmin, request, queryset):
    """Admin action on usage daily rows: the selected rows as a spend CSV download."""
    span = queryset.aggregate(first=Min("date"), last=Max("date"))
    name = f"spend-{span['first'].isoformat()}-to-{span['last'].isoformat()}" if span["first"] else "spend"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    spend_csv_write(spend_rows_of(queryset), response)
    return response
