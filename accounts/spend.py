"""Reads of money spent, for admin pages: a key's spend today and this month (its daily rollups), a team's
spend over a period by key and by model (its usage records, as a team budget counts them), and how far each
budget has gone. Amounts are Decimal in GATEWAY_CURRENCY."""

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Q, Sum

from accounts.budgets import UNIT, budget_spent_db, period_bounds
from accounts.models import ApiKey, UsageDaily, UsageRecord

ZERO = Decimal(0)
CENT = Decimal("0.01")


def money(amount: Decimal | None) -> str:
    """An amount as ops read it: at least two decimals, no trailing zeros past them, then the currency."""
    amount = (amount or ZERO).quantize(UNIT)
    shown = amount.normalize()
    if shown.as_tuple().exponent > -2:
        shown = amount.quantize(CENT)
    return f"{shown:f} {settings.GATEWAY_CURRENCY}"


@dataclass(frozen=True)
class KeySpend:
    today: Decimal
    month: Decimal


def key_spend(*, api_key_id: int, now: datetime | None = None) -> KeySpend:
    """A key's spend on the current UTC day and month, from its flushed daily rollups (one query)."""
    month_start, _end = period_bounds("month", now)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    totals = UsageDaily.objects.filter(api_key_id=api_key_id, date__gte=month_start.date()).aggregate(
        month=Sum("cost"), today=Sum("cost", filter=Q(date=today))
    )
    return KeySpend(today=(totals["today"] or ZERO).quantize(UNIT), month=(totals["month"] or ZERO).quantize(UNIT))


@dataclass(frozen=True)
class SpendRow:
    label: str
    requests: int
    cost: Decimal
    api_key_id: int | None = None


@dataclass(frozen=True)
class TeamSpend:
    start: datetime
    total: Decimal
    by_key: list[SpendRow]
    by_model: list[SpendRow]


def team_spend(*, team_id: int, period: str = "month", now: datetime | None = None) -> TeamSpend:
    """What a team's usage records cost in the current period, by key and by model (three grouped queries)."""
    start, end = period_bounds(period, now)
    records = UsageRecord.objects.filter(team_id=team_id)
    if start is not None:
        records = records.filter(created_at__gte=start, created_at__lt=end)
    by_key = list(records.values("api_key_id").annotate(requests=Count("id"), cost=Sum("cost")).order_by("-cost"))
    keys = ApiKey.objects.in_bulk([row["api_key_id"] for row in by_key if row["api_key_id"] is not None])
    key_rows = [
        SpendRow(
            label=str(keys[row["api_key_id"]]) if row["api_key_id"] in keys else "(no key)",
            requests=row["requests"],
            cost=(row["cost"] or ZERO).quantize(UNIT),
            api_key_id=row["api_key_id"],
        )
        for row in by_key
    ]
    model_rows = [
        SpendRow(label=row["model"], requests=row["requests"], cost=(row["cost"] or ZERO).quantize(UNIT))
        for row in records.values("model").annotate(requests=Count("id"), cost=Sum("cost")).order_by("-cost", "model")
    ]
    total = sum((row.cost for row in key_rows), ZERO)
    return TeamSpend(start=start, total=total, by_key=key_rows, by_model=model_rows)


@dataclass(frozen=True)
class BudgetStatus:
    budget: object
    spent: Decimal

    @property
    def share(self) -> Decimal | None:
        """Spent as a fraction of the amount (None for a zero amount)."""
        return (self.spent / self.budget.amount) if self.budget.amount else None


def budget_statuses(budgets) -> list[BudgetStatus]:
    """Each budget with what it has counted in its current period (one query per budget: a handful per page)."""
    return [BudgetStatus(budget=budget, spent=budget_spent_db(budget)) for budget in budgets]
