"""Reads over usage: a key's own usage report (UsageDaily plus events still queued in Redis) and the
ops dashboard's breakdowns of recent UsageRecord rows."""

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from asgiref.sync import async_to_sync
from django.db.models import BigIntegerField, Count, DecimalField, F, Q, Sum
from django.db.models.functions import Coalesce, TruncHour, TruncMinute
from django.utils import timezone

from accounts.context import KeyContext
from accounts.limits import limits_remaining
from accounts.models import LIMIT_FIELDS, UsageDaily, UsageRecord
from accounts.usage import usage_model_prices, usage_pending_totals
from providers.dialects.canonical import Usage
from providers.pricing import COST_QUANTUM

USAGE_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens")


def usage_daily_rows(*, api_key_id: int, start: date, end: date) -> list[dict]:
    """Flushed per-day, per-model totals of one key, start and end inclusive."""
    return list(
        UsageDaily.objects.filter(api_key_id=api_key_id, date__gte=start, date__lte=end)
        .order_by("date", "model")
        .values("date", "model", *USAGE_FIELDS, "cost")
    )


def usage_report_rows(*, api_key_id: int, start: date, end: date) -> list[dict]:
    """Per-day, per-model usage of one key: flushed rows plus events not yet flushed from Redis.

    Queued events count at the cost they carry (priced when the call ran, as the flush stores it); those
    without one are priced here as the flush will price them, at the model's prices now.
    """
    merged: dict[tuple[date, str], dict] = {}
    for row in usage_daily_rows(api_key_id=api_key_id, start=start, end=end):
        merged[(row["date"], row["model"])] = {**row, "cost": Decimal(row["cost"])}

    pending = usage_pending_totals(api_key_id=api_key_id, start=start, end=end, costs=True)
    prices = usage_model_prices({model for _, model in pending}) if pending else {}
    for (day, model), totals in pending.items():
        row = merged.setdefault(
            (day, model), {"date": day, "model": model, **dict.fromkeys(USAGE_FIELDS, 0), "cost": Decimal(0)}
        )
        for name in USAGE_FIELDS:
            row[name] += int(totals.get(name, 0))
        row["cost"] += totals["cost_units"] * COST_QUANTUM
        unpriced = Usage(
            max(totals["prompt_tokens"] - totals["costed_prompt_tokens"], 0),
            max(totals["completion_tokens"] - totals["costed_completion_tokens"], 0),
        )
        if model in prices and (unpriced.prompt_tokens or unpriced.completion_tokens):
            row["cost"] += prices[model].cost(unpriced)
    return [merged[key] for key in sorted(merged)]


def usage_totals(rows: Sequence[dict]) -> dict:
    totals = {name: sum(row[name] for row in rows) for name in USAGE_FIELDS}
    totals["cost"] = sum((row["cost"] for row in rows), Decimal(0))
    return totals


def key_usage_report(*, ctx: KeyContext, start: date, end: date) -> dict:
    """Everything a key may know about itself: limits in force, what is left today, usage over start..end."""
    rows = usage_report_rows(api_key_id=ctx.key_id, start=start, end=end)
    return {
        "key": {"name": ctx.key_name, "prefix": ctx.key_prefix, "tier": ctx.tier_name},
        "tier": {
            "name": ctx.tier_name,
            **{name: getattr(ctx, name) for name in LIMIT_FIELDS},
            "max_compare_models": ctx.max_compare_models,
            "models": sorted(ctx.allowed_models) if ctx.allowed_models is not None else None,
        },
        "remaining_today": async_to_sync(limits_remaining)(ctx),
        "start": start,
        "end": end,
        "totals": usage_totals(rows),
        "rows": rows,
    }


DASHBOARD_WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _error_filter() -> Q:
    # 499 = the client went away; that is not a failure of the gateway or the provider.
    return Q(status_code__gte=400) & ~Q(status_code=499)


def _refused_filter() -> Q:
    """Answers refused with a 4xx (limits, budgets, models not allowed, bad requests), apart from failures."""
    return Q(status_code__gte=400, status_code__lt=500) & ~Q(status_code=499)


def _window_records(since: datetime):
    return UsageRecord.objects.filter(created_at__gte=since)


def _aggregates() -> dict:
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=_error_filter()),
        "refused": Count("id", filter=_refused_filter()),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0, output_field=BigIntegerField()),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0, output_field=BigIntegerField()),
        "cost": Coalesce(Sum("cost"), Decimal(0), output_field=DecimalField(max_digits=20, decimal_places=8)),
    }


def _with_ttfb(row: dict, ttfb: list[float]) -> dict:
    row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["ttfb_p50_ms"] = percentile(ttfb, 50)
    row["ttfb_p95_ms"] = percentile(ttfb, 95)
    return row


def usage_ttfb_samples(*, since: datetime) -> list[tuple[str, str, float, str]]:
    """(provider, model, ttfb_ms, endpoint) of every request since `since` that got a first byte."""
    return list(
        _window_records(since).filter(ttfb_ms__isnull=False).values_list("provider", "model", "ttfb_ms", "endpoint")
    )


def usage_window_summary(*, since: datetime, ttfb_samples: list[tuple]) -> dict:
    row = _window_records(since).aggregate(**_aggregates())
    return _with_ttfb(row, [sample[2] for sample in ttfb_samples])


def usage_breakdown(*, since: datetime, by: str, ttfb_samples: list[tuple]) -> list[dict]:
    """Requests, errors, tokens and TTFB p50/p95 per provider, model or endpoint since `since`, busiest first."""
    position = {"provider": 0, "model": 1, "endpoint": 3}[by]
    ttfb: dict[str, list[float]] = defaultdict(list)
    for sample in ttfb_samples:
        ttfb[sample[position]].append(sample[2])
    rows = _window_records(since).values(by).annotate(**_aggregates()).order_by("-requests", by)
    breakdown = []
    for row in rows:
        name = row.pop(by)
        breakdown.append(_with_ttfb({"name": name, **row}, ttfb.get(name, [])))
    return breakdown


def usage_timeseries(*, since: datetime, until: datetime, bucket: str) -> list[dict]:
    """Requests and errors per minute or per hour (UTC) from since to until, empty buckets included."""
    trunc, step = {"minute": (TruncMinute, timedelta(minutes=1)), "hour": (TruncHour, timedelta(hours=1))}[bucket]
    counted = (
        _window_records(since)
        .filter(created_at__lte=until)
        .annotate(bucket=trunc("created_at", tzinfo=UTC))
        .values("bucket")
        .annotate(requests=Count("id"), errors=Count("id", filter=_error_filter()))
    )
    by_bucket = {row["bucket"]: row for row in counted}
    first = since.astimezone(UTC).replace(second=0, microsecond=0)
    if bucket == "hour":
        first = first.replace(minute=0)
    series = []
    moment = first
    while moment <= until:
        row = by_bucket.get(moment, {})
        series.append({"start": moment, "requests": row.get("requests", 0), "errors": row.get("errors", 0)})
        moment += step
    return series


def usage_top_keys(*, since: datetime, limit: int = 10) -> list[dict]:
    """Keys with the most tokens since `since`."""
    rows = (
        _window_records(since)
        .filter(api_key__isnull=False)
        .values("api_key_id", key_name=F("api_key__name"), key_prefix=F("api_key__prefix"))
        .annotate(**_aggregates())
        .annotate(tokens=F("prompt_tokens") + F("completion_tokens"))
        .order_by("-tokens", "-requests", "api_key_id")[:limit]
    )
    return list(rows)


def usage_refusals(*, since: datetime) -> list[dict]:
    """Refused answers (4xx but 499) since `since` by status and error code, most frequent first."""
    rows = (
        _window_records(since)
        .filter(_refused_filter())
        .values("status_code", "error_type")
        .annotate(requests=Count("id"))
        .order_by("-requests", "status_code", "error_type")
    )
    return list(rows)


def usage_team_spend(*, since: datetime) -> list[dict]:
    """Requests and cost per team since `since`, dearest first; the team is the one a record was made under
    (as team budgets count it), None for keys without a team."""
    rows = (
        _window_records(since)
        .values("team_id", team_name=F("team__name"))
        .annotate(
            requests=Count("id"),
            cost=Coalesce(Sum("cost"), Decimal(0), output_field=DecimalField(max_digits=20, decimal_places=8)),
        )
        .order_by("-cost", "-requests", "team_name")
    )
    return list(rows)


def dashboard_data(*, window: str, now: datetime | None = None) -> dict:
    now = now or timezone.now()
    since = now - DASHBOARD_WINDOWS[window]
    # Spend by team is the UTC calendar month's, as a monthly budget counts it.
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    # One read of the TTFB values serves the summary and both breakdowns.
    samples = usage_ttfb_samples(since=since)
    return {
        "since": since,
        "until": now,
        "summary": usage_window_summary(since=since, ttfb_samples=samples),
        "providers": usage_breakdown(since=since, by="provider", ttfb_samples=samples),
        "models": usage_breakdown(since=since, by="model", ttfb_samples=samples),
        "endpoints": usage_breakdown(since=since, by="endpoint", ttfb_samples=samples),
        "timeseries": usage_timeseries(since=since, until=now, bucket="minute" if window == "1h" else "hour"),
        "top_keys": usage_top_keys(since=since),
        "refusals": usage_refusals(since=since),
        "month_start": month_start,
        "team_spend": usage_team_spend(since=month_start),
    }


def playground_keys(*, user) -> list:
    """The user's keys the browser playground may run as: enabled and unexpired, oldest first."""
    from accounts.models import ApiKey

    now = timezone.now()
    return list(
        ApiKey.objects.filter(owner=user, enabled=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .select_related("tier")
        .prefetch_related("tier__allowed_models")
        .order_by("created_at")
    )
