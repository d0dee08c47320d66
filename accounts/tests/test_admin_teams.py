"""Admin for teams, budgets and money: team pages with members, models, a checked alert webhook, budgets and
spend by key and model; budget validation; a key's spend, budgets and usage link; keys revoked, never deleted;
the issued-key page shown once after a redirect; usage records filtered without a query per row."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.keys import key_matches
from accounts.models import ApiKey, Budget, Team, Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue
from aigateway.redis import redis_sync
from providers.models import Model

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"sk-gw-[A-Za-z0-9_-]{20,}")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def url(name: str, *args) -> str:
    return reverse(f"admin:accounts_{name}", args=args)


def shown_amount(html: str, testid: str) -> Decimal:
    match = re.search(rf'data-testid="{testid}">([0-9.]+) USD<', html)
    assert match, f"{testid} not on the page"
    return Decimal(match.group(1))


def team_form(**overrides) -> dict:
    data = {
        "name": "research",
        "alert_webhook": "",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def key_form(api_key: ApiKey, **overrides) -> dict:
    data = {
        "name": api_key.name,
        "tier": str(api_key.tier_id),
        "team": str(api_key.team_id or ""),
        "enabled": "on",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    data.update(overrides)
    return data


@pytest.fixture
def tier():
    return Tier.objects.create(name="free")


def record(request_id: str, *, api_key=None, team=None, user=None, model="m1", cost="0", when=None, **fields):
    return UsageRecord.objects.create(
        request_id=request_id,
        api_key=api_key,
        team=team,
        user=user,
        model=model,
        endpoint=fields.pop("endpoint", "chat.completions"),
        status_code=fields.pop("status_code", 200),
        cost=Decimal(cost),
        created_at=when or datetime.now(UTC),
        **fields,
    )


# Teams


def test_team_is_created_with_members_models_webhook_and_a_budget(admin_client, admin_user):
    alice = get_user_model().objects.create_user("alice")
    fast = Model.objects.create(name="sim-fast")
    data = team_form(
        members=[str(alice.pk), str(admin_user.pk)],
        allowed_models=[str(fast.pk)],
        alert_webhook="https://hooks.example.com/budget",
        **{
            "budgets-TOTAL_FORMS": "1",
            "budgets-0-period": "month",
            "budgets-0-amount": "5.00",
            "budgets-0-soft_thresholds": "[0.9, 0.5]",
            "budgets-0-enabled": "on",
        },
    )
    response = admin_client.post(url("team_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    team = Team.objects.get(name="research")
    assert set(team.members.values_list("username", flat=True)) == {"alice", admin_user.username}
    assert list(team.allowed_models.values_list("name", flat=True)) == ["sim-fast"]
    assert team.alert_webhook == "https://hooks.example.com/budget"
    budget = Budget.objects.get()
    assert (budget.scope, budget.team, budget.period, budget.amount) == ("team", team, "month", Decimal("5"))
    assert budget.soft_thresholds == [0.5, 0.9]

    html = admin_client.get(url("team_change", team.pk)).content.decode()
    assert "selectfilter" in html.lower()  # members and models are filter_horizontal
    assert "team-spend-total" in html
    changelist = admin_client.get(url("team_changelist")).content.decode()
    assert 'class="field-member_count">2<' in changelist


@pytest.mark.parametrize(
    ("webhook", "fragment"),
    [
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://169.254.10.1/hook", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://100.100.100.200/hook", "metadata"),
        ("ftp://hooks.example.com/x", "must use http or https"),
    ],
)
def test_alert_webhook_follows_the_upstream_address_policy(admin_client, webhook, fragment):
    response = admin_client.post(url("team_add"), team_form(alert_webhook=webhook))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["alert_webhook"]
    assert fragment in " ".join(errors)
    assert not Team.objects.exists()


def test_loopback_webhook_is_refused_unless_the_policy_allows_it(admin_client, settings):
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    response = admin_client.post(url("team_add"), team_form(alert_webhook="http://127.0.0.1:9/hook"))
    assert "loopback" in " ".join(response.context["adminform"].form.errors["alert_webhook"])
    assert not Team.objects.exists()

    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = True
    assert admin_client.post(url("team_add"), team_form(alert_webhook="http://127.0.0.1:9/hook")).status_code == 302
    assert Team.objects.get().alert_webhook == "http://127.0.0.1:9/hook"


def test_team_page_lists_its_keys_with_links_and_its_spend_by_key_and_model(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    other_team = Team.objects.create(name="other")
    first = api_key_issue(owner=admin_user, tier=tier, name="first", team=team).api_key
    second = api_key_issue(owner=admin_user, tier=tier, name="second", team=team).api_key
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    record("r1", api_key=first, team=team, model="m1", cost="1.25")
    record("r2", api_key=first, team=team, model="m2", cost="0.00000010")
    record("r3", api_key=second, team=team, model="m1", cost="2")
    record("r4", api_key=second, team=other_team, model="m1", cost="100")  # before the key moved teams
    record("r5", api_key=first, team=team, model="m1", cost="50", when=month_start - timedelta(seconds=1))

    html = admin_client.get(url("team_change", team.pk)).content.decode()
    assert shown_amount(html, "team-spend-total") == Decimal("3.25000010")
    by_key = html[html.index('data-testid="team-spend-by-key"') : html.index('data-testid="team-spend-by-model"')]
    assert by_key.count('data-testid="team-spend-by-key-row"') == 2
    assert url("apikey_change", first.pk) in by_key and url("apikey_change", second.pk) in by_key
    assert "1.2500001 USD" in by_key and "2.00 USD" in by_key
    by_model = html[html.index('data-testid="team-spend-by-model"') :]
    assert "3.25 USD" in by_model and "0.0000001 USD" in by_model
    # The keys inline: read-only, linking to each key.
    assert f'href="{url("apikey_change", first.pk)}">first<' in html
    assert 'name="api_keys-0-name"' not in html


# Budgets


def budget_form(**overrides) -> dict:
    data = {"scope": "global", "period": "month", "amount": "10", "soft_thresholds": "[0.5, 0.8, 1.0]"}
    data.update(overrides)
    data.setdefault("enabled", "on")
    return data


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"scope": "key"}, "api_key", "A key budget needs an API key."),
        ({"scope": "team"}, "team", "A team budget needs a team."),
        ({"scope": "user"}, "user", "A user budget needs a user."),
        ({"amount": "-1"}, "amount", "The amount must not be negative"),
        ({"soft_thresholds": "[0.5, 1.5]"}, "soft_thresholds", "fractions in (0, 1]; 1.5 is not"),
        ({"soft_thresholds": "[0]"}, "soft_thresholds", "0 is not"),
        ({"soft_thresholds": '["half"]'}, "soft_thresholds", "'half' is not a number"),
        ({"soft_thresholds": "0.5"}, "soft_thresholds", "must be a list"),
        ({"soft_thresholds": "[0.5, 0.5]"}, "soft_thresholds", "lists 0.5 twice"),
    ],
)
def test_budget_admin_names_each_problem(admin_client, overrides, field, fragment):
    response = admin_client.post(url("budget_add"), budget_form(**overrides))
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors.get(field, []))
    assert fragment in errors, response.context["adminform"].form.errors
    assert not Budget.objects.exists()


def test_budget_admin_refuses_a_target_the_scope_does_not_have(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k").api_key
    response = admin_client.post(url("budget_add"), budget_form(scope="key", api_key=api_key.pk, team=team.pk))
    assert "A key budget applies to an API key; leave team empty." in response.context["adminform"].form.errors["team"]
    response = admin_client.post(url("budget_add"), budget_form(scope="global", user=admin_user.pk))
    assert (
        "A global budget applies to every key; leave user empty." in response.context["adminform"].form.errors["user"]
    )
    assert not Budget.objects.exists()

    response = admin_client.post(url("budget_add"), budget_form(scope="key", api_key=api_key.pk, amount="0.5"))
    assert response.status_code == 302
    budget = Budget.objects.get()
    assert (budget.scope, budget.api_key, budget.amount) == ("key", api_key, Decimal("0.5"))
    record("b1", api_key=api_key, cost="0.125")
    page = admin_client.get(url("budget_change", budget.pk)).content.decode()
    assert shown_amount(page, "budget-spent") == Decimal("0.125")
    assert admin_client.get(url("budget_changelist")).status_code == 200


# API keys


def test_key_page_shows_spend_today_and_this_month_from_its_rollups(admin_client, admin_user, tier):
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k").api_key
    other = api_key_issue(owner=admin_user, tier=tier, name="other").api_key
    today = datetime.now(UTC).date()
    month_start = today.replace(day=1)
    UsageDaily.objects.create(date=today, api_key=api_key, model="m1", cost=Decimal("1.25"))
    UsageDaily.objects.create(date=today, api_key=api_key, model="m2", cost=Decimal("0.00000123"))
    UsageDaily.objects.create(date=today, api_key=other, model="m1", cost=Decimal("9"))
    UsageDaily.objects.create(date=month_start - timedelta(days=1), api_key=api_key, model="m1", cost=Decimal("40"))
    month = Decimal("1.25000123")
    if month_start != today:
        UsageDaily.objects.create(date=month_start, api_key=api_key, model="m1", cost=Decimal("2"))
        month += 2

    html = admin_client.get(url("apikey_change", api_key.pk)).content.decode()
    assert shown_amount(html, "key-spend-today") == Decimal("1.25000123")
    assert shown_amount(html, "key-spend-month") == month
    usage_url = f"{url('usagerecord_changelist')}?api_key__id__exact={api_key.pk}"
    assert f'href="{usage_url.replace("&", "&amp;")}"' in html


def test_key_page_adds_key_budgets_and_lists_the_team_and_global_ones(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k", team=team).api_key
    Budget.objects.create(scope="team", team=team, period="month", amount=Decimal("5"))
    Budget.objects.create(scope="global", period="day", amount=Decimal("100"))
    html = admin_client.get(url("apikey_change", api_key.pk)).content.decode()
    assert "team research" in html and "5.00 USD per month" in html
    assert "global global" in html and "100.00 USD per day" in html

    data = key_form(
        api_key,
        **{
            "budgets-TOTAL_FORMS": "1",
            "budgets-0-period": "day",
            "budgets-0-amount": "2.5",
            "budgets-0-soft_thresholds": "[1.0]",
            "budgets-0-enabled": "on",
        },
    )
    response = admin_client.post(url("apikey_change", api_key.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    budget = Budget.objects.get(scope="key")
    assert (budget.api_key, budget.period, budget.amount, budget.soft_thresholds) == (
        api_key,
        "day",
        Decimal("2.5"),
        [1.0],
    )

    bad = key_form(
        api_key,
        **{"budgets-TOTAL_FORMS": "1", "budgets-0-period": "day", "budgets-0-amount": "-3", "budgets-0-enabled": "on"},
    )
    response = admin_client.post(url("apikey_change", api_key.pk), bad)
    assert response.status_code == 200
    assert "The amount must not be negative" in response.content.decode()
    assert Budget.objects.filter(scope="key").count() == 1


def test_key_team_is_set_in_admin(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k").api_key
    assert admin_client.post(url("apikey_change", api_key.pk), key_form(api_key, team=str(team.pk))).status_code == 302
    api_key.refresh_from_db()
    assert api_key.team == team
    by_team = admin_client.get(url("apikey_changelist"), {"team__id__exact": team.pk})
    assert list(by_team.context["cl"].result_list) == [api_key]


def test_keys_are_revoked_never_deleted_in_admin(admin_client, admin_user, tier):
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k").api_key
    record("kept", api_key=api_key, cost="1")
    assert admin_client.get(url("apikey_delete", api_key.pk)).status_code == 403
    assert admin_client.post(url("apikey_delete", api_key.pk), {"post": "yes"}).status_code == 403
    changelist = admin_client.get(url("apikey_changelist"))
    actions = [value for value, _label in changelist.context["action_form"].fields["action"].choices]
    assert "delete_selected" not in actions and "revoke_keys" in actions
    response = admin_client.post(
        url("apikey_changelist"), {"action": "delete_selected", "_selected_action": [api_key.pk], "post": "yes"}
    )
    assert ApiKey.objects.filter(pk=api_key.pk).exists()

    response = admin_client.post(
        url("apikey_changelist"), {"action": "revoke_keys", "_selected_action": [api_key.pk]}, follow=True
    )
    assert "1 API key(s) revoked." in response.content.decode()
    api_key.refresh_from_db()
    assert not api_key.enabled
    assert UsageRecord.objects.get(request_id="kept").api_key == api_key


# The issued key page


def issue_in_admin(admin_client, admin_user, tier, **fields):
    data = {"name": "partner", "owner": str(admin_user.pk), "tier": str(tier.pk), "enabled": "on", "_save": "Save"}
    data.update(fields)
    return admin_client.post(url("apikey_add"), data)


def test_issued_key_page_follows_a_redirect_and_shows_the_key_once(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    response = issue_in_admin(admin_client, admin_user, tier, team=str(team.pk))
    assert response.status_code == 302
    api_key = ApiKey.objects.get(name="partner")
    assert api_key.team == team
    assert response["Location"].startswith(url("apikey_change", api_key.pk).removesuffix("change/") + "issued/")
    assert KEY_RE.search(response.content.decode()) is None

    # Between the POST and the page, Redis holds no plaintext (only ciphertext it cannot open alone).
    client = redis_sync()
    for name in client.scan_iter("*"):
        if client.type(name) == b"string":
            assert not KEY_RE.search(client.get(name).decode(errors="replace")), name

    page = admin_client.get(response["Location"])
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    html = page.content.decode()
    [plaintext] = KEY_RE.findall(html)
    assert key_matches(plaintext, api_key.key_hash)
    assert 'data-testid="copy-key"' in html and "accounts/copy_key.js" in html
    assert "in team <strong>research</strong>" in html

    again = admin_client.get(response["Location"])
    assert again.status_code == 410
    assert KEY_RE.search(again.content.decode()) is None
    assert "shown once already" in again.content.decode()
    assert ApiKey.objects.count() == 1  # reloading issued nothing


def test_issued_key_page_is_only_for_the_user_who_issued_it(admin_client, admin_user, tier, client):
    location = issue_in_admin(admin_client, admin_user, tier)["Location"]
    other = get_user_model().objects.create_superuser("other-admin", password="pw")
    client.force_login(other)
    response = client.get(location)
    assert response.status_code == 410
    assert KEY_RE.search(response.content.decode()) is None


def test_copy_button_script_is_served_from_the_site(client):
    response = client.get("/static/accounts/copy_key.js")
    assert response.status_code == 200
    assert b"navigator.clipboard" in b"".join(response.streaming_content)


# Usage records


def test_usage_records_filter_by_key_team_user_model_endpoint_and_status(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    bob = get_user_model().objects.create_user("bob")
    first = api_key_issue(owner=admin_user, tier=tier, name="first", team=team).api_key
    second = api_key_issue(owner=bob, tier=tier, name="second").api_key
    record("a", api_key=first, team=team, user=admin_user, model="m1")
    record("b", api_key=second, user=bob, model="m2", endpoint="messages", status_code=429)
    record("c", api_key=second, user=bob, model="m2", status_code=502)

    def ids(**params) -> list[str]:
        response = admin_client.get(url("usagerecord_changelist"), params)
        assert response.status_code == 200
        return sorted(r.request_id for r in response.context["cl"].result_list)

    assert ids(api_key__id__exact=first.pk) == ["a"]
    assert ids(team__id__exact=team.pk) == ["a"]
    assert ids(user__id__exact=bob.pk) == ["b", "c"]
    assert ids(model="m2") == ["b", "c"]
    assert ids(endpoint="messages") == ["b"]
    assert ids(status="429") == ["b"]
    assert ids(status="upstream") == ["c"]
    assert ids(status="ok") == ["a"]
    html = admin_client.get(url("usagerecord_changelist")).content.decode()
    for title in ("api key", "team", "user", "model", "endpoint", "status"):
        assert f'data-filter-title="{title}"' in html


def test_usage_records_page_costs_the_same_queries_for_3_or_60_rows(admin_client, admin_user, tier):
    team = Team.objects.create(name="research")
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k", team=team).api_key

    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(url("usagerecord_changelist")).status_code == 200
        return len(captured)

    for index in range(3):
        record(f"few-{index}", api_key=api_key, team=team, user=admin_user)
    few = queries_for_page()
    for index in range(57):
        other = api_key_issue(owner=admin_user, tier=tier, name=f"k{index}").api_key
        record(f"many-{index}", api_key=other, team=team, user=admin_user)
    assert queries_for_page() == few


def test_usage_daily_has_the_spend_export_action(admin_client, admin_user, tier):
    api_key = api_key_issue(owner=admin_user, tier=tier, name="k").api_key
    UsageDaily.objects.create(date=datetime.now(UTC).date(), api_key=api_key, model="m1", cost=Decimal("1.5"))
    changelist = admin_client.get(url("usagedaily_changelist"))
    actions = [value for value, _label in changelist.context["action_form"].fields["action"].choices]
    assert "export_spend_csv" in actions
