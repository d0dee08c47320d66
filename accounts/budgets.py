"""Budgets in money: periods, the exact units Redis counts in, and what was spent.

Amounts are Decimal in GATEWAY_CURRENCY everywhere. Redis counts them as integers of UNIT (1e-8, the
precision of a usage record's cost), so every process adds and compares exactly. A budget's counter for
one period is a hash `gw:budget:<id>:<period start>` with two fields: "s", the cost of the calls settled in
the period, and "r", what the calls in flight reserved (their maximum cost) and have not settled yet.
Admission reserves against every budget that applies in one Lua call with the limits (accounts.limits);
a call's finish replaces its reservation by its real cost. A counter that is missing (a new period, a new
budget, a Redis that lost its data) is seeded from the usage records in the database.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.db.models import Q, Sum

UNIT = Decimal("0.00000001")
_PER_UNIT = Decimal(100_000_000)
PERIODS = ("day", "week", "month", "total")
BUDGET_KEY_PREFIX = "gw:budget"
# How long a period's counter outlives the period: calls admitted just before its end settle into it.
_COUNTER_GRACE_SECONDS = 2 * 86400


def to_units(amount: Decimal) -> int:
    """An amount in whole UNITs, rounded up (a reservation or a cost is never undercounted)."""
    return int((Decimal(amount) * _PER_UNIT).to_integral_value(rounding=ROUND_CEILING))


def from_units(units: int) -> Decimal:
    return (Decimal(int(units)) / _PER_UNIT).quantize(UNIT)


def period_bounds(period: str, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
    """The UTC calendar period containing `now`: [start, end). A "total" budget has neither."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if period == "total":
        return None, None
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())  # ISO weeks start on Monday
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    raise ValueError(f"unknown budget period {period!r}; expected one of {', '.join(PERIODS)}")


@dataclass(frozen=True, slots=True)
class BudgetRef:
    """What the hot path knows of one budget that applies to a key (cached with the KeyContext)."""

    id: int
    scope: str
    name: str
    period: str
    limit_units: int

    def counter(self, now: datetime | None = None) -> tuple[str, int]:
        """The Redis key of the period containing `now`, and the seconds it lives (0 = no expiry)."""
        start, end = period_bounds(self.period, now)
        if start is None:
            return f"{BUDGET_KEY_PREFIX}:{self.id}:total", 0
        now = (now or datetime.now(UTC)).astimezone(UTC)
        ttl = int((end - now).total_seconds()) + _COUNTER_GRACE_SECONDS
        return f"{BUDGET_KEY_PREFIX}:{self.id}:{int(start.timestamp())}", ttl


def budget_ref(budget) -> BudgetRef:
    return BudgetRef(
        id=budget.id,
        scope=budget.scope,
        name=budget.scope_name,
        period=budget.period,
        limit_units=to_units(budget.amount),
    )


def budgets_applying(*, key_id: int, owner_id: int | None, team_id: int | None):
    """The enabled budgets of a key, its owner, its team and the global ones (a queryset)."""
    from accounts.models import Budget

    scopes = Q(scope="global") | Q(scope="key", api_key_id=key_id)
    if owner_id is not None:
        scopes |= Q(scope="user", user_id=owner_id)
    if team_id is not None:
        scopes |= Q(scope="team", team_id=team_id)
    return Budget.objects.filter(scopes, enabled=True).select_related("api_key", "user", "team")


def records_in_scope(budget, start: datetime | None = None, end: datetime | None = None):
    """The usage records a budget counts: its scope's, created in [start, end)."""
    from accounts.models import UsageRecord

    records = UsageRecord.objects.all()
    if budget.scope == "key":
        records = records.filter(api_key_id=budget.api_key_id)
    elif budget.scope == "user":
        records = records.filter(user_id=budget.user_id)
    elif budget.scope == "team":
        records = records.filter(team_id=budget.team_id)
    if start is not None:
        records = records.filter(created_at__gte=start)
    if end is not None:
        records = records.filter(created_at__lt=end)
    return records


def budget_spent_db(budget, now: datetime | None = None) -> Decimal:
    """The cost of the usage records the budget counts in its current period (the database's view)."""
    start, end = period_bounds(budget.period, now)
    total = records_in_scope(budget, start, end).aggregate(total=Sum("cost"))["total"]
    return (total or Decimal(0)).quantize(UNIT)
