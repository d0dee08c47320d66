"""Budgets in money: periods, the exact units Redis counts in, and what was spent.

Amounts are Decimal in GATEWAY_CURRENCY everywhere. Redis counts them as integers of UNIT (1e-8, the
precision of a usage record's cost), so every process adds and compares exactly. A budget's counter for
one period is a hash `gw:budget:<id>:<period start>` with two fields: "s", the cost of the calls settled in
the period, and "r", what the calls in flight reserved (their maximum cost) and have not settled yet.
Admission reserves against every budget that applies in one Lua call with the limits (accounts.limits);
a call's finish replaces its reservation by its real cost. A counter that is missing (a new period, a new
budget, a Redis that lost its data) is seeded from the usage records in the database.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Q, Sum

from aigateway.db import db_read
from aigateway.redis import redis_sync

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


def money(amount: Decimal) -> str:
    """An amount as a decimal string: every significant digit, and at least cents ("500.00", "12.345678")."""
    value = Decimal(amount).normalize()
    if value.as_tuple().exponent > -2:
        value = value.quantize(Decimal("0.01"))
    return f"{value:f}"


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
    records = records_in_scope(budget, start, end)
    if connection.vendor == "sqlite":
        # SQLite adds decimals as floats: add them here, exactly (the embedded default's volumes are small).
        return sum(records.values_list("cost", flat=True).iterator(chunk_size=5000), Decimal(0)).quantize(UNIT)
    total = records.aggregate(total=Sum("cost"))["total"]
    return (total or Decimal(0)).quantize(UNIT)


# Counter names per (budget id, period): recomputed only when a period ends.
_counter_cache: dict[tuple[int, str], tuple[float, str, float]] = {}


def budget_counters(refs) -> tuple[tuple[str, ...], list[int]]:
    """The Redis counters of the current period of each budget, and how long each should live (0 = always).
    Cheap on the hot path: the names are cached until their period ends."""
    now = time.time()
    keys, ttls = [], []
    for ref in refs:
        cached = _counter_cache.get((ref.id, ref.period))
        if cached is None or cached[0] <= now:
            key, ttl = ref.counter()
            end = now + ttl - _COUNTER_GRACE_SECONDS if ttl else float("inf")
            if len(_counter_cache) > 100_000:
                _counter_cache.clear()
            _counter_cache[(ref.id, ref.period)] = cached = (end, key, float(ttl and _COUNTER_GRACE_SECONDS))
        end, key, grace = cached
        keys.append(key)
        ttls.append(0 if end == float("inf") else int(end - now + grace) + 1)
    return tuple(keys), ttls


def budget_resets_at(period: str, now: datetime | None = None) -> datetime | None:
    return period_bounds(period, now)[1]


def _scope_label(scope: str, name: str) -> str:
    return "global budget" if scope == "global" else f"budget of {'API key' if scope == 'key' else scope} {name!r}"


def budget_refusal_message(ref: BudgetRef, *, spent: Decimal, reserved: Decimal, request: Decimal) -> str:
    """What a client refused by `ref` reads: the scope, the period, spent and limit, and when it resets."""
    currency = settings.GATEWAY_CURRENCY
    resets = budget_resets_at(ref.period)
    period = {"day": "a day (UTC)", "total": "in total"}.get(ref.period, f"a {ref.period} (UTC)")
    in_flight = f" ({money(reserved)} {currency} held by calls in flight)" if reserved else ""
    when = (
        f" It resets at {resets.isoformat().replace('+00:00', 'Z')}."
        if resets
        else " It does not reset: raise the budget to go on."
    )
    return (
        f"Budget exceeded: the {_scope_label(ref.scope, ref.name)} allows {money(from_units(ref.limit_units))} "
        f"{currency} {period}; {money(spent)} {currency} spent{in_flight}, and this request may cost up to "
        f"{money(request)} {currency}.{when}"
    )


def _seed(refs) -> None:
    """Create the missing counters of `refs` from the usage records (HSETNX: a counter another process
    created meanwhile is left as it is)."""
    from accounts.models import Budget

    budgets = {budget.id: budget for budget in Budget.objects.filter(pk__in=[ref.id for ref in refs])}
    client = redis_sync()
    for ref in refs:
        key, ttl = ref.counter()
        if client.hexists(key, "s"):
            continue
        budget = budgets.get(ref.id)
        spent = budget_spent_db(budget) if budget is not None else Decimal(0)
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(key, "s", to_units(spent))
        if ttl:
            pipe.expire(key, ttl)
        pipe.execute()


async def budgets_seed(refs) -> None:
    await db_read(_seed, tuple(refs))


def budget_counter_read(ref: BudgetRef) -> tuple[Decimal, Decimal]:
    """(spent, reserved) of a budget's current period, from its Redis counter, seeded first if missing."""
    key, _ = ref.counter()
    client = redis_sync()
    values = client.hmget(key, "s", "r")
    if values[0] is None:
        _seed((ref,))
        values = client.hmget(key, "s", "r")
    return from_units(int(values[0] or 0)), from_units(int(values[1] or 0))


def budget_spent(budget) -> Decimal:
    """What a budget's current period has spent (settled calls), as every process counts it."""
    return budget_counter_read(budget_ref(budget))[0]


def budget_report(budget) -> dict:
    """One budget as GET /api/v1/budget shows it (amounts as decimal strings)."""
    ref = budget_ref(budget)
    spent, reserved = budget_counter_read(ref)
    limit = from_units(ref.limit_units)
    resets = budget_resets_at(ref.period)
    return {
        "scope": ref.scope,
        "name": ref.name,
        "period": ref.period,
        "limit": money(limit),
        "spent": money(spent),
        "reserved": money(reserved),
        "remaining": money(max(limit - spent - reserved, Decimal(0))),
        "resets_at": resets.isoformat().replace("+00:00", "Z") if resets else None,
    }
