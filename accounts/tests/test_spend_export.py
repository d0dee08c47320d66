"""Spend export: the CSV rows from the daily totals, `manage.py export_spend` and the admin action."""

import csv
import io
from datetime import date
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import RequestFactory
from django.urls import reverse

from accounts.models import Team, Tier, UsageDaily
from accounts.services import api_key_issue
from accounts.spend_export import SPEND_COLUMNS, SpendExportError, export_spend_csv, spend_rows

pytestmark = pytest.mark.django_db

HEADER = ",".join(SPEND_COLUMNS)


@pytest.fixture
def spend(settings):
    settings.GATEWAY_CURRENCY = "EUR"
    tier = Tier.objects.create(name="spend")
    owner = get_user_model().objects.create_user("finance-owner")
    research = Team.objects.create(name="research")
    support = Team.objects.create(name="support")
    lab = api_key_issue(owner=owner, tier=tier, name="lab", team=research).api_key
    desk = api_key_issue(owner=owner, tier=tier, name="=HYPERLINK(1)", team=support).api_key
    loner = api_key_issue(owner=owner, tier=tier, name="loner").api_key

    def day(when, key, model, cost, requests=1, errors=0, prompt=10, completion=20):
        return UsageDaily.objects.create(
            date=when,
            api_key=key,
            model=model,
            requests=requests,
            errors=errors,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=Decimal(cost),
        )

    rows = [
        day(date(2025, 3, 1), lab, "gpt-a", "0.00000001", requests=3, errors=1, prompt=1200, completion=340),
        day(date(2025, 3, 1), lab, "gpt-b", "12.34567890"),
        day(date(2025, 3, 2), desk, "gpt-a", "0.1"),
        day(date(2025, 3, 2), loner, "gpt-a", "2"),
        day(date(2025, 2, 28), lab, "gpt-a", "99"),  # before the range
        day(date(2025, 3, 4), lab, "gpt-a", "98"),  # after it
    ]
    return {"lab": lab, "desk": desk, "loner": loner, "rows": rows}


def test_rows_cover_the_range_with_exact_costs_and_teams(spend):
    rows = list(spend_rows(date(2025, 3, 1), date(2025, 3, 3), None))
    assert rows == [
        {
            "date": "2025-03-01",
            "team": "research",
            "key_prefix": spend["lab"].prefix,
            "key_name": "lab",
            "model": "gpt-a",
            "requests": 3,
            "errors": 1,
            "prompt_tokens": 1200,
            "completion_tokens": 340,
            "cost": "0.00000001",
            "currency": "EUR",
        },
        {
            "date": "2025-03-01",
            "team": "research",
            "key_prefix": spend["lab"].prefix,
            "key_name": "lab",
            "model": "gpt-b",
            "requests": 1,
            "errors": 0,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "cost": "12.34567890",
            "currency": "EUR",
        },
        {
            "date": "2025-03-02",
            "team": "",
            "key_prefix": spend["loner"].prefix,
            "key_name": "loner",
            "model": "gpt-a",
            "requests": 1,
            "errors": 0,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "cost": "2.00000000",
            "currency": "EUR",
        },
        {
            "date": "2025-03-02",
            "team": "support",
            "key_prefix": spend["desk"].prefix,
            "key_name": "=HYPERLINK(1)",
            "model": "gpt-a",
            "requests": 1,
            "errors": 0,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "cost": "0.10000000",
            "currency": "EUR",
        },
    ]


def test_rows_of_one_team(spend):
    rows = list(spend_rows(date(2025, 1, 1), date(2025, 12, 31), "research"))
    assert [(row["date"], row["model"], row["cost"]) for row in rows] == [
        ("2025-02-28", "gpt-a", "99.00000000"),
        ("2025-03-01", "gpt-a", "0.00000001"),
        ("2025-03-01", "gpt-b", "12.34567890"),
        ("2025-03-04", "gpt-a", "98.00000000"),
    ]


def test_rows_refuse_an_unknown_team_and_a_reversed_range(spend):
    with pytest.raises(SpendExportError, match="no team is named 'ghosts'"):
        spend_rows(date(2025, 3, 1), date(2025, 3, 3), "ghosts")
    with pytest.raises(SpendExportError, match="2025-03-01 is before the start date 2025-03-03"):
        spend_rows(date(2025, 3, 3), date(2025, 3, 1), None)


def test_command_writes_the_csv_to_stdout(spend):
    out = io.StringIO()
    call_command("export_spend", "--start", "2025-03-01", "--end", "2025-03-03", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == HEADER
    assert lines[1] == f"2025-03-01,research,{spend['lab'].prefix},lab,gpt-a,3,1,1200,340,0.00000001,EUR"
    # A name a spreadsheet would run as a formula stays text.
    assert lines[4] == f"2025-03-02,support,{spend['desk'].prefix},'=HYPERLINK(1),gpt-a,1,0,10,20,0.10000000,EUR"
    assert len(lines) == 5


def test_command_writes_one_team_to_a_file(spend, tmp_path):
    target = tmp_path / "spend.csv"
    err = io.StringIO()
    call_command(
        "export_spend", "--start", "2025-03-01", "--end", "2025-03-31", "--team", "research", "--output", str(target),
        stderr=err,
    )  # fmt: skip
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["date"], row["model"], row["cost"], row["team"]) for row in rows] == [
        ("2025-03-01", "gpt-a", "0.00000001", "research"),
        ("2025-03-01", "gpt-b", "12.34567890", "research"),
        ("2025-03-04", "gpt-a", "98.00000000", "research"),
    ]
    assert sum(Decimal(row["cost"]) for row in rows) == Decimal("110.34567891")
    assert "Wrote 3 rows" in err.getvalue()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--start", "2025-13-01", "--end", "2025-03-02"], "--start '2025-13-01' is not a date (YYYY-MM-DD)"),
        (["--start", "2025-03-01", "--end", "yesterday"], "--end 'yesterday' is not a date (YYYY-MM-DD)"),
        (
            ["--start", "2025-03-05", "--end", "2025-03-01"],
            "the end date 2025-03-01 is before the start date 2025-03-05",
        ),
        (["--start", "2025-03-01", "--end", "2025-03-02", "--team", "ghosts"], "no team is named 'ghosts'"),
    ],
)
def test_command_errors_name_the_bad_input(spend, arguments, message):
    with pytest.raises(CommandError) as raised:
        call_command("export_spend", *arguments, stdout=io.StringIO())
    assert str(raised.value) == message


def test_admin_action_exports_the_selected_rows(spend, admin_user):
    request = RequestFactory().post("/admin/accounts/usagedaily/")
    request.user = admin_user
    model_admin = admin.site._registry[UsageDaily]
    selected = UsageDaily.objects.filter(pk__in=[spend["rows"][1].pk, spend["rows"][3].pk, spend["rows"][5].pk])
    response = export_spend_csv(model_admin, request, selected)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="spend-2025-03-01-to-2025-03-04.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(row["date"], row["key_name"], row["model"], row["cost"]) for row in rows] == [
        ("2025-03-01", "lab", "gpt-b", "12.34567890"),
        ("2025-03-02", "loner", "gpt-a", "2.00000000"),
        ("2025-03-04", "lab", "gpt-a", "98.00000000"),
    ]


def test_the_usage_daily_changelist_offers_the_export(spend, admin_client):
    url = reverse("admin:accounts_usagedaily_changelist")
    assert "export_spend_csv" in admin_client.get(url).content.decode()
    selected = [spend["rows"][0].pk, spend["rows"][2].pk]
    response = admin_client.post(url, {"action": "export_spend_csv", "_selected_action": selected})
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="spend-2025-03-01-to-2025-03-02.csv"'
    lines = response.content.decode().splitlines()
    assert lines[0] == HEADER
    assert [line.split(",")[3] for line in lines[1:]] == ["lab", "'=HYPERLINK(1)"]
