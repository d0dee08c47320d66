"""Reads of the response cache for admin pages: a team's or a key's hits, calls and money saved this month with
the answers its scope holds now, and the dashboard's hits and savings per model and per team over a window.
Figures come from usage records (`cache_hit`, `cost_saved`); amounts are Decimal in GATEWAY_CURRENCY."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, DecimalField, F, Q, Sum
from django.db.models.functions import Coalesce

from accounts.budgets import UNIT, period_bounds
from accounts.models import ApiKey, UsageRecord
from providers.response_cache import cache_entry_count, cache_scope

ZERO = Decimal(0)
_HIT = Q(cache_hit=True)


def cache_team_scope(*, team_id: int) -> str:
    """The cache scope of a team's keys (a team's scope names the team alone, whoever owns the key)."""
    return cache_scope(team_id=team_id, owner_id=0)


def _cache_aggregates() -> dict:
    return {
        "calls": Count("id"),
        "hits": Count("id", filter=_HIT),
        "saved": Coalesce(
            Sum("cost_saved", filter=_HIT), ZERO, output_field=DecimalField(max_digits=20, decimal_places=8)
        ),
    }


def hit_ratio(hits: int, calls: int) -> Decimal | None:
    """Hits as a percentage of calls, to one decimal (None without calls)."""
    if not calls:
        return None
    return (Decimal(hits * 100) / Decimal(calls)).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class CacheFigures:
    """A scope's response cache this month: the calls and hits of its records, what the hits saved, and
    how many answers the scope holds in Redis now (None when Redis could not be read)."""

    scope: str
    start: datetime
    calls: int
    hits: int
    saved: Decimal
    entries: int | None

    @property
    def ratio(self) -> Decimal | None:
        return hit_ratio(self.hits, self.calls)


def _figures(*, scope: str, records, now: datetime | None) -> CacheFigures:
    start, end = period_bounds("month", now)
    totals = records.filter(created_at__gte=start, created_at__lt=end).aggregate(**_cache_aggregates())
    try:
        entries = cache_entry_count(scope=scope)
    except Exception:
        # An admin page still opens while the cache's Redis is away; the count says it is unknown.
        entries = None
    return CacheFigures(
        scope=scope,
        start=start,
        calls=totals["calls"],
        hits=totals["hits"],
        saved=totals["saved"].quantize(UNIT),
        entries=entries,
    )


def cache_team_figures(*, team_id: int, now: datetime | None = None) -> CacheFigures:
    """A team's figures: the records made under the team (as its budgets count them), and its scope's entries."""
    return _figures(
        scope=cache_team_scope(team_id=team_id),
        records=UsageRecord.objects.filter(team_id=team_id),
        now=now,
    )


def cache_key_figures(*, api_key: ApiKey, now: datetime | None = None) -> CacheFigures:
    """A key's figures: its own records, and the entries of the scope it shares (its team's, else its owner's)."""
    return _figures(
        scope=cache_scope(team_id=api_key.team_id, owner_id=api_key.owner_id),
        records=UsageRecord.objects.filter(api_key_id=api_key.pk),
        now=now,
    )


def _with_ratio(row: dict) -> dict:
    row["ratio"] = hit_ratio(row["hits"], row["calls"])
    return row


def cache_window_summary(*, since: datetime) -> dict:
    """Calls, hits, hit ratio and money saved of every record since `since` (one query)."""
    return _with_ratio(UsageRecord.objects.filter(created_at__gte=since).aggregate(**_cache_aggregates()))


def cache_by_model(*, since: datetime) -> list[dict]:
    """Per model with at least one hit since `since`: calls, hits, ratio and money saved, largest saving first."""
    rows = (
        UsageRecord.objects.filter(created_at__gte=since)
        .values("model")
        .annotate(**_cache_aggregates())
        .filter(hits__gt=0)
        .order_by("-saved", "-hits", "model")
    )
    return [_with_ratio(row) for row in rows]


def cache_by_team(*, since: datetime) -> list[dict]:
    """As cache_by_model, per team a record was made under (team_id None: keys without a team)."""
    rows = (
        UsageRecord.objects.filter(created_at__gte=since)
        .values("team_id", team_name=F("team__name"))
        .annotate(**_cache_aggregates())
        .filter(hits__gt=0)
        .order_by("-saved", "-hits", "team_name")
    )
    return [_with_ratio(row) for row in rows]
