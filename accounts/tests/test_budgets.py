"""Budget arithmetic: exact units, calendar periods, the refusal message. Pure functions."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.budgets import BudgetRef, budget_refusal_message, from_units, money, period_bounds, to_units


@given(st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False, allow_infinity=False))
def test_units_round_trip_every_amount_with_eight_places(amount):
    assert from_units(to_units(amount)) == amount


@given(st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False))
def test_units_never_undercount(amount):
    assert from_units(to_units(amount)) >= amount
    assert from_units(to_units(amount)) - amount < Decimal("0.00000001")


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)))
def test_calendar_periods_contain_the_moment_and_start_where_the_calendar_says(now):
    for period in ("day", "week", "month"):
        start, end = period_bounds(period, now)
        assert start <= now < end
        assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
    assert period_bounds("week", now)[0].weekday() == 0
    assert period_bounds("week", now)[1] - period_bounds("week", now)[0] == timedelta(days=7)
    month_start, month_end = period_bounds("month", now)
    assert month_start.day == 1 and month_end.day == 1
    assert 28 <= (month_end - month_start).days <= 31
    assert period_bounds("total", now) == (None, None)


def test_december_rolls_into_january_and_unknown_periods_are_refused():
    assert period_bounds("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(ValueError, match="unknown budget period 'year'"):
        period_bounds("year")


def test_money_keeps_every_digit_and_at_least_cents():
    assert [money(Decimal(v)) for v in ("500", "500.00000000", "12.345678", "0.1", "0")] == [
        "500.00",
        "500.00",
        "12.345678",
        "0.10",
        "0.00",
    ]


def test_the_refusal_names_scope_period_spent_limit_and_reset(settings):
    settings.GATEWAY_CURRENCY = "EUR"
    team = BudgetRef(id=1, scope="team", name="research", period="day", limit_units=to_units(Decimal(5)))
    message = budget_refusal_message(team, spent=Decimal("4.9"), reserved=Decimal("0.05"), request=Decimal("0.2"))
    tomorrow = period_bounds("day")[1].isoformat().replace("+00:00", "Z")
    assert message == (
        "Budget exceeded: the budget of team 'research' allows 5.00 EUR a day (UTC); 4.90 EUR spent (0.05 EUR held "
        f"by calls in flight), and this request may cost up to 0.20 EUR. It resets at {tomorrow}."
    )
    total = BudgetRef(id=2, scope="global", name="global", period="total", limit_units=1)
    assert "does not reset" in budget_refusal_message(total, spent=Decimal(0), reserved=Decimal(0), request=Decimal(1))
