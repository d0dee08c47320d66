"""Config import of teams: members, models, alert webhook and budgets; a re-import updates in place and never
duplicates budgets; every bad value is named with its line and nothing is written."""

import textwrap
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from accounts.models import Budget, BudgetAlert, Team
from providers.config_import import ConfigImportError, gateway_config_import
from providers.models import Model

pytestmark = pytest.mark.django_db

TEAMS = """\
models:
  - name: sim-fast
    deployments: []
teams:
  - name: research
    members: [alice, bob]
    models: [sim-fast, sim-slow]
    alert_webhook: https://hooks.example.com/budget
    budgets:
      - {period: month, amount: 500, soft: [0.9, 0.5]}
      - {period: day, amount: "25.125"}
  - name: ops
"""


def run_import(text: str):
    return gateway_config_import(data_text=textwrap.dedent(text), source_name="gateway.yaml")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    return excinfo.value.problems


def teams_snapshot() -> dict:
    return {
        "teams": list(Team.objects.order_by("name").values("id", "name", "alert_webhook")),
        "members": sorted(Team.members.through.objects.values_list("team__name", "user__username")),
        "models": sorted(Team.allowed_models.through.objects.values_list("team__name", "model__name")),
        "budgets": list(Budget.objects.order_by("id").values()),
    }


@pytest.fixture(autouse=True)
def users_and_models():
    for name in ("alice", "bob", "carol"):
        get_user_model().objects.create_user(name)
    Model.objects.create(name="sim-slow")


def test_teams_are_imported_with_members_models_webhook_and_budgets():
    summary = run_import(TEAMS)
    research = Team.objects.get(name="research")
    assert set(research.members.values_list("username", flat=True)) == {"alice", "bob"}
    assert set(research.allowed_models.values_list("name", flat=True)) == {"sim-fast", "sim-slow"}
    assert research.alert_webhook == "https://hooks.example.com/budget"
    budgets = {b.period: b for b in research.budgets.all()}
    assert set(budgets) == {"month", "day"}
    assert (budgets["month"].scope, budgets["month"].amount, budgets["month"].soft_thresholds) == (
        "team",
        Decimal("500"),
        [0.5, 0.9],
    )
    assert budgets["day"].amount == Decimal("25.125")
    assert budgets["day"].soft_thresholds == [0.5, 0.8, 1.0]  # omitted: the default
    ops = Team.objects.get(name="ops")
    assert (ops.alert_webhook, ops.members.count(), ops.budgets.count()) == ("", 0, 0)
    assert (summary.teams.created, summary.budgets.created) == (2, 2)
    assert any(line.startswith("teams:") for line in summary.lines())


def test_reimport_changes_nothing_and_keeps_budget_ids_and_alerts():
    run_import(TEAMS)
    month = Budget.objects.get(period="month")
    alert = BudgetAlert.objects.create(
        budget=month, period_start=month.created_at, threshold=Decimal("0.5"), spent=Decimal("250")
    )
    before = teams_snapshot()
    summary = run_import(TEAMS)
    assert teams_snapshot() == before
    assert (summary.teams.unchanged, summary.budgets.unchanged, summary.budgets.created) == (2, 2, 0)
    assert BudgetAlert.objects.filter(pk=alert.pk).exists()


def test_reimport_replaces_the_budget_set_and_membership_with_the_files():
    run_import(TEAMS)
    month_id = Budget.objects.get(period="month").pk
    Budget.objects.create(scope="team", team=Team.objects.get(name="research"), period="week", amount=Decimal("1"))
    changed = TEAMS.replace("members: [alice, bob]", "members: [carol]").replace(
        '      - {period: day, amount: "25.125"}\n', ""
    )
    changed = changed.replace("{period: month, amount: 500, soft: [0.9, 0.5]}", "{period: month, amount: 750.5}")
    summary = run_import(changed)
    research = Team.objects.get(name="research")
    assert list(research.members.values_list("username", flat=True)) == ["carol"]
    [budget] = research.budgets.all()
    assert (budget.pk, budget.period, budget.amount, budget.soft_thresholds) == (
        month_id,
        "month",
        Decimal("750.5"),
        [0.5, 0.8, 1.0],
    )
    assert (summary.teams.updated, summary.budgets.updated, summary.budgets.deleted) == (1, 1, 2)


BAD_TEAMS = {
    "unknown member": (
        "teams:\n  - name: research\n    members:\n      - alice\n      - mallory\n",
        5,
        ["team 'research' members refers to unknown user 'mallory'"],
    ),
    "unknown model": (
        "teams:\n  - name: research\n    models: [sim-fast, ghost]\n",
        3,
        ["team 'research' models refers to unknown model 'ghost'"],
    ),
    "negative amount": (
        "teams:\n  - name: research\n    budgets:\n      - {period: month, amount: -5}\n",
        4,
        ["budget #1 of team 'research': amount must not be negative, got -5"],
    ),
    "amount not a number": (
        "teams:\n  - name: research\n    budgets:\n      - {period: month, amount: lots}\n",
        4,
        ["amount must be a number, not 'lots'"],
    ),
    "missing amount": (
        "teams:\n  - name: research\n    budgets:\n      - {period: month}\n",
        4,
        ["budget #1 of team 'research' is missing required key 'amount'"],
    ),
    "too many decimals": (
        "teams:\n  - name: research\n    budgets:\n      - {amount: 0.000000001}\n",
        4,
        ["at most 8 digits before and 8 after the point"],
    ),
    "bad period": (
        "teams:\n  - name: research\n    budgets:\n      - {period: year, amount: 5}\n",
        4,
        ["period 'year' is not one of: day, week, month, total"],
    ),
    "threshold above one": (
        "teams:\n  - name: research\n    budgets:\n      - {amount: 5, soft: [0.5, 1.2]}\n",
        4,
        ["soft must be a list of fractions in (0, 1]; 1.2 is not"],
    ),
    "threshold zero": ("teams:\n  - name: research\n    budgets:\n      - {amount: 5, soft: [0]}\n", 4, ["0 is not"]),
    "thresholds not a list": (
        "teams:\n  - name: research\n    budgets:\n      - {amount: 5, soft: 0.5}\n",
        4,
        ["soft must be a list of fractions"],
    ),
    "two budgets for one period": (
        "teams:\n  - name: research\n    budgets:\n      - {amount: 5}\n      - {period: month, amount: 6}\n",
        5,
        ["repeats period 'month' (first at line 4)"],
    ),
    "unknown budget key": (
        "teams:\n  - name: research\n    budgets:\n      - {amount: 5, soft_thresholds: [0.5]}\n",
        4,
        ["unknown key 'soft_thresholds'", "allowed keys: period, amount, soft, enabled"],
    ),
    "unknown team key": (
        "teams:\n  - name: research\n    member: [alice]\n",
        3,
        ["unknown key 'member' in team 'research' (did you mean 'members'?)"],
    ),
    "metadata webhook": (
        "teams:\n  - name: research\n    alert_webhook: http://169.254.169.254/latest\n",
        3,
        ["team 'research': alert_webhook points at 169.254.169.254 is a cloud metadata address"],
    ),
    "webhook not http": (
        "teams:\n  - name: research\n    alert_webhook: ftp://hooks.example.com/\n",
        3,
        ["alert_webhook must be an http:// or https:// URL"],
    ),
    "duplicate team": ("teams:\n  - name: research\n  - name: research\n", 3, ["team 'research' is defined twice"]),
    "teams not a list": ("teams: research\n", 1, ["teams must be a list"]),
}


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_TEAMS.values(), ids=BAD_TEAMS.keys())
def test_bad_teams_are_rejected_with_line_and_nothing_is_written(text, line, fragments):
    run_import(TEAMS)
    before = teams_snapshot()
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"gateway.yaml line {line}: "), problems
    for fragment in fragments:
        assert fragment in problems[0], problems
    assert teams_snapshot() == before


def test_loopback_webhook_follows_the_policy(settings):
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    [problem] = problems_of("teams:\n  - name: research\n    alert_webhook: http://127.0.0.1:9000/hook\n")
    assert "loopback" in problem
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = True
    run_import("teams:\n  - name: research\n    alert_webhook: http://127.0.0.1:9000/hook\n")
    assert Team.objects.get().alert_webhook == "http://127.0.0.1:9000/hook"


def test_a_team_problem_writes_nothing_else_from_the_file():
    problems_of("models:\n  - name: brand-new\n    deployments: []\nteams:\n  - {name: t, members: [nobody]}\n")
    assert not Model.objects.filter(name="brand-new").exists()
    assert not Team.objects.exists()


CACHED = """\
tiers:
  - name: evals
    cache_ttl_seconds: 600
  - name: plain
teams:
  - name: ci
    cache_ttl_seconds: 0
  - name: inherit
"""


def test_cache_ttls_are_imported_for_tiers_and_teams_and_left_out_means_off_or_inherited():
    from accounts.models import Tier

    run_import(CACHED)
    assert dict(Tier.objects.values_list("name", "cache_ttl_seconds")) == {"evals": 600, "plain": 0}
    assert dict(Team.objects.values_list("name", "cache_ttl_seconds")) == {"ci": 0, "inherit": None}
    run_import(CACHED.replace("cache_ttl_seconds: 600", "cache_ttl_seconds: 30"))
    assert Tier.objects.get(name="evals").cache_ttl_seconds == 30


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("-1", "must be at least 0, got -1"), ("soon", "must be an integer or null, not a string")],
)
def test_a_bad_team_cache_ttl_is_named_with_its_line(value, fragment):
    problems = problems_of(CACHED.replace("cache_ttl_seconds: 0", f"cache_ttl_seconds: {value}"))
    assert any(
        "line 7" in problem and "cache_ttl_seconds" in problem and fragment in problem for problem in problems
    ), problems


def test_a_bad_tier_cache_ttl_is_named_with_its_line():
    problems = problems_of(CACHED.replace("cache_ttl_seconds: 600", "cache_ttl_seconds: null"))
    assert any("line 3" in problem and "cache_ttl_seconds" in problem for problem in problems), problems


LOGGED = """\
tiers:
  - name: debug
    log_bodies: full
  - name: quiet
    log_bodies: off
  - name: plain
teams:
  - name: support
    log_bodies: metadata
  - name: inherit
"""


def test_log_levels_are_imported_for_tiers_and_teams_a_bare_off_included():
    from accounts.models import Tier

    run_import(LOGGED)
    assert dict(Tier.objects.values_list("name", "log_bodies")) == {"debug": "full", "quiet": "off", "plain": "off"}
    assert dict(Team.objects.values_list("name", "log_bodies")) == {"support": "metadata", "inherit": ""}


def test_a_bad_log_level_is_named_with_its_line():
    problems = problems_of(LOGGED.replace("log_bodies: metadata", "log_bodies: everything"))
    assert any("line 9" in p and "'everything' is not one of: off, metadata, full" in p for p in problems), problems
