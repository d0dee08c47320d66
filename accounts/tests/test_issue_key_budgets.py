"""`manage.py issue_key --team T --budget 5 --budget-period day`: a key in a team, with a budget of its own;
an unknown team or a bad amount is refused naming it, and nothing is issued."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.auth import key_context_load
from accounts.keys import key_hash
from accounts.models import ApiKey, Budget, Team, Tier

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def tier():
    return Tier.objects.create(name="free")


def issue_key(*args: str) -> list[str]:
    out = StringIO()
    call_command("issue_key", "--tier", "free", "--name", "ci", *args, stdout=out)
    return out.getvalue().splitlines()


def test_key_in_a_team_with_a_daily_budget():
    team = Team.objects.create(name="research")
    lines = issue_key("--team", "research", "--budget", "5", "--budget-period", "day")
    api_key = ApiKey.objects.get()
    assert api_key.team == team
    budget = Budget.objects.get()
    assert (budget.scope, budget.api_key, budget.period, budget.amount) == ("key", api_key, "day", Decimal("5"))
    assert "team research" in lines[0]
    assert "Budget: 5.00 USD per day." in lines
    # The key's context carries the budget and the team to the hot path.
    ctx = key_context_load(key_hash(lines[-1]))
    assert ctx.team_id == team.pk
    assert [(ref.scope, ref.period, ref.limit_units) for ref in ctx.budgets] == [("key", "day", 500_000_000)]


def test_budget_period_defaults_to_month_and_amounts_are_exact():
    issue_key("--budget", "12.345")
    budget = Budget.objects.get()
    assert (budget.period, budget.amount) == ("month", Decimal("12.345"))
    assert ApiKey.objects.get().team is None


def test_unknown_team_is_named_and_nothing_is_issued():
    Team.objects.create(name="research")
    with pytest.raises(CommandError, match=r"unknown team 'reserch' \(teams: research\)"):
        issue_key("--team", "reserch", "--budget", "5")
    assert not ApiKey.objects.exists() and not Budget.objects.exists()


@pytest.mark.parametrize(
    ("amount", "fragment"), [("-5", "must not be negative"), ("five", "must be a number"), ("NaN", "finite")]
)
def test_bad_budget_is_refused(amount, fragment):
    with pytest.raises(CommandError, match=fragment):
        issue_key("--budget", amount)
    assert not ApiKey.objects.exists()


def test_bad_period_or_period_without_amount_is_refused():
    with pytest.raises(CommandError, match="invalid choice: 'year'"):
        issue_key("--budget", "5", "--budget-period", "year")
    with pytest.raises(CommandError, match="--budget-period needs --budget"):
        issue_key("--budget-period", "day")
    assert not ApiKey.objects.exists()
