"""Ops in a real browser (Debian's chromium driven by Playwright) against a gateway process, a Celery worker, the
simulator and real Redis over loopback: log into admin, create a team with a budget in money, issue a key in it
(the plaintext shown once, after a redirect, with a copy button), spend through the API, and see the spend on
the key's and the team's pages equal to the usage records' cost. Screenshots land in var/test-artifacts/."""

import re
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db.models import Sum
from playwright.sync_api import expect

from accounts.models import ApiKey, Budget, Team, Tier, UsageDaily, UsageRecord
from tests.support.browser import ARTIFACTS
from tests.support.data import model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-ops-spend-check-5678"
CALLS = 3
AMOUNT_RE = re.compile(r"^([0-9]+\.[0-9]+) USD$")


@pytest.fixture
def priced_model(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create(
        "spend-sim",
        [(sim, "sim-echo?tokens=25", 0)],
        input_price_per_million=Decimal("1.5"),
        output_price_per_million=Decimal("4.25"),
    )
    Tier.objects.create(name="spenders")
    get_user_model().objects.create_superuser("ops", email="ops@example.com", password=PASSWORD)


def amount_of(page, testid: str) -> Decimal:
    text = page.get_by_test_id(testid).inner_text().strip()
    match = AMOUNT_RE.match(text)
    assert match, text
    return Decimal(match.group(1))


def test_ops_create_a_team_issue_a_key_and_see_its_spend(gateway, celery_worker, priced_model, browser, monkeypatch):
    celery_worker(beat=True, flush_seconds=0.5)
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    # Set after the worker started, so it stays out of the worker's environment.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    page = context.new_page()
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    page.goto(gateway.url + "/admin/login/?next=/admin/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(gateway.url + "/admin/")

    # A team with ops as a member and a 5.00 USD monthly budget.
    page.goto(gateway.url + "/admin/accounts/team/add/")
    page.fill("#id_name", "finance")
    page.select_option("#id_members_from", label="ops")
    page.click("#id_members_add")
    page.select_option("#id_budgets-0-period", "month")
    page.fill("#id_budgets-0-amount", "5.00")
    page.click("input[name=_save]")
    expect(page).to_have_url(re.compile(r"/admin/accounts/team/$"))
    team = Team.objects.get(name="finance")
    assert list(team.members.values_list("username", flat=True)) == ["ops"]
    budget = Budget.objects.get(team=team)
    assert (budget.scope, budget.period, budget.amount, budget.soft_thresholds) == (
        "team",
        "month",
        Decimal("5"),
        [0.5, 0.8, 1.0],
    )

    # A key in the team: the plaintext is on the page the add form redirects to, once.
    page.goto(gateway.url + "/admin/accounts/apikey/add/")
    page.fill("#id_name", "finance-bot")
    page.select_option("#id_tier", label="spenders")
    page.select_option("#id_team", label="finance")
    page.click("input[name=_save]")
    expect(page).to_have_url(re.compile(r"/admin/accounts/apikey/\d+/issued/[^/]+/$"))
    plaintext = page.get_by_test_id("issued-key").input_value()
    assert plaintext.startswith("sk-gw-")
    page.get_by_test_id("copy-key").click()
    expect(page.get_by_test_id("copy-status")).to_have_text("Copied.")
    assert page.evaluate("() => navigator.clipboard.readText()") == plaintext
    page.screenshot(path=str(ARTIFACTS / "admin-key-issued.png"), full_page=True)
    issued_url = page.url
    reloaded = page.reload()
    assert reloaded.status == 410
    expect(page.get_by_test_id("issued-key-gone")).to_be_visible()
    assert page.get_by_test_id("issued-key").count() == 0
    assert plaintext not in page.content()
    api_key = ApiKey.objects.get(name="finance-bot")
    assert api_key.team == team and ApiKey.objects.count() == 1
    assert issued_url.startswith(f"{gateway.url}/admin/accounts/apikey/{api_key.pk}/issued/")

    # Spend through the API with the key, streamed and not.
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for index in range(CALLS):
            response = client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {plaintext}"},
                json={
                    "model": "spend-sim",
                    "stream": index % 2 == 1,
                    "messages": [{"role": "user", "content": f"spend {index}"}],
                },
            )
            assert response.status_code == 200, response.text

    def flushed() -> bool:
        daily = UsageDaily.objects.filter(api_key=api_key).aggregate(requests=Sum("requests"))["requests"]
        return UsageRecord.objects.filter(api_key=api_key).count() == CALLS and daily == CALLS

    eventually(flushed, timeout=20, what="the usage flush")
    records = UsageRecord.objects.filter(api_key=api_key)
    spent = records.aggregate(total=Sum("cost"))["total"]
    assert spent > 0
    assert set(records.values_list("team_id", flat=True)) == {team.pk}

    page.goto(f"{gateway.url}/admin/accounts/apikey/{api_key.pk}/change/")
    assert amount_of(page, "key-spend-today") == spent
    assert amount_of(page, "key-spend-month") == spent
    page.screenshot(path=str(ARTIFACTS / "admin-key-spend.png"), full_page=True)
    page.get_by_test_id("key-usage-link").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(CALLS)
    page.screenshot(path=str(ARTIFACTS / "admin-key-usage.png"), full_page=True)

    page.goto(f"{gateway.url}/admin/accounts/team/{team.pk}/change/")
    assert amount_of(page, "team-spend-total") == spent
    by_key = page.get_by_test_id("team-spend-by-key-row")
    expect(by_key).to_have_count(1)
    assert "finance-bot" in by_key.inner_text()
    assert Decimal(by_key.get_by_test_id("spend-cost").inner_text().removesuffix(" USD")) == spent
    page.screenshot(path=str(ARTIFACTS / "admin-team-spend.png"), full_page=True)
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
    context.close()
