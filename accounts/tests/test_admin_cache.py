"""The response cache in the accounts admin: TTLs edited on tier, team and key pages (each save moves the config
version), a team's and a key's hits, calls, ratio, savings this month and answers cached now, and the team
list's purge action, checked against what is left in the real Redis."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.auth import key_context_build
from accounts.models import ApiKey, Team, Tier, UsageRecord
from accounts.services import api_key_issue
from aigateway.config_version import CONFIG_VERSION_KEY
from aigateway.redis import redis_sync
from tests.support.response_cache import cache_entries_put, cache_keys_left

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def url(name: str, *args) -> str:
    return reverse(f"admin:accounts_{name}", args=args)


def config_version():
    return redis_sync().get(CONFIG_VERSION_KEY)


def tier_form(tier: Tier, **overrides) -> dict:
    data = {
        "name": tier.name,
        "rpm": "",
        "tpm": "",
        "max_concurrent": "",
        "daily_tokens": "",
        "max_output_tokens": "",
        "max_compare_models": "4",
        "cache_ttl_seconds": "0",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def team_form(team: Team | None = None, **overrides) -> dict:
    data = {
        "name": team.name if team else "research",
        "alert_webhook": "",
        "cache_ttl_seconds": "",
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
        "cache_ttl_seconds": "",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def record(request_id: str, *, api_key, team=None, hit=False, saved="0", cost="0", when=None):
    return UsageRecord.objects.create(
        request_id=request_id,
        api_key=api_key,
        team=team,
        user=api_key.owner,
        model="m1",
        endpoint="chat.completions",
        status_code=200,
        cost=Decimal(cost),
        cache_hit=hit,
        cost_saved=Decimal(saved),
        created_at=when or datetime.now(UTC),
    )


def figures(html: str) -> dict[str, str]:
    """The cache figures table of a change page, by data-testid."""
    table = html[html.index('data-testid="cache-figures"') :]
    table = table[: table.index("</table>")]
    return dict(re.findall(r'<td data-testid="(cache-[a-z]+)">([^<]*)</td>', table))


def test_cache_ttl_is_edited_on_tier_team_and_key_pages_and_each_save_moves_the_config_version(
    admin_client, admin_user, django_capture_on_commit_callbacks
):
    tier = Tier.objects.create(name="free")
    api_key = api_key_issue(owner=admin_user, tier=tier, name="ci").api_key
    assert key_context_build(ApiKey.objects.get(pk=api_key.pk)).cache_ttl == 0

    def saved(path: str, data: dict) -> None:
        before = config_version()
        with django_capture_on_commit_callbacks(execute=True):
            response = admin_client.post(path, data)
        assert response.status_code == 302, response.content.decode()[:3000]
        assert config_version() not in (None, before)

    def ttl_in_force() -> int:
        return key_context_build(ApiKey.objects.select_related("tier", "team", "owner").get(pk=api_key.pk)).cache_ttl

    # The tier's TTL: shown in the tier list, in force for its keys.
    saved(url("tier_change", tier.pk), tier_form(tier, cache_ttl_seconds="300"))
    assert Tier.objects.get(pk=tier.pk).cache_ttl_seconds == 300
    assert ttl_in_force() == 300
    changelist = admin_client.get(url("tier_changelist")).content.decode()
    assert 'class="field-cache_ttl_shown">300 s<' in changelist
    # Left empty, the tier's cache is off (not a refused form).
    saved(url("tier_change", tier.pk), tier_form(tier, cache_ttl_seconds=""))
    assert Tier.objects.get(pk=tier.pk).cache_ttl_seconds == 0
    assert 'class="field-cache_ttl_shown">off<' in admin_client.get(url("tier_changelist")).content.decode()
    saved(url("tier_change", tier.pk), tier_form(tier, cache_ttl_seconds="300"))

    # A team's TTL overrides the tier's for the team's keys.
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(url("team_add"), team_form(cache_ttl_seconds="60")).status_code == 302
    team = Team.objects.get(name="research")
    assert team.cache_ttl_seconds == 60
    saved(url("apikey_change", api_key.pk), key_form(ApiKey.objects.get(pk=api_key.pk), team=str(team.pk)))
    assert ttl_in_force() == 60
    saved(url("team_change", team.pk), team_form(team, cache_ttl_seconds="0"))
    assert ttl_in_force() == 0
    html = admin_client.get(url("apikey_change", api_key.pk)).content.decode()
    assert 'data-testid="cache-ttl-in-force">off</span> (team research&#x27;s)' in html

    # The key's own TTL overrides both; empty again, the team's is back in force.
    saved(url("apikey_change", api_key.pk), key_form(ApiKey.objects.get(pk=api_key.pk), cache_ttl_seconds="120"))
    assert ApiKey.objects.get(pk=api_key.pk).cache_ttl_seconds == 120
    assert ttl_in_force() == 120
    html = admin_client.get(url("apikey_change", api_key.pk)).content.decode()
    assert 'cache-ttl-in-force">120 s</span> (the key&#x27;s own)' in html
    saved(url("apikey_change", api_key.pk), key_form(ApiKey.objects.get(pk=api_key.pk), cache_ttl_seconds=""))
    assert ApiKey.objects.get(pk=api_key.pk).cache_ttl_seconds is None
    assert ttl_in_force() == 0
    saved(url("team_change", team.pk), team_form(team, cache_ttl_seconds=""))
    assert Team.objects.get(pk=team.pk).cache_ttl_seconds is None
    assert ttl_in_force() == 300


def test_a_key_issued_in_admin_keeps_its_cache_ttl(admin_client, admin_user):
    tier = Tier.objects.create(name="free", cache_ttl_seconds=300)
    data = {
        "name": "partner",
        "owner": str(admin_user.pk),
        "tier": str(tier.pk),
        "enabled": "on",
        "cache_ttl_seconds": "0",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    response = admin_client.post(url("apikey_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    api_key = ApiKey.objects.get(name="partner")
    assert api_key.cache_ttl_seconds == 0
    assert key_context_build(api_key).cache_ttl == 0


def test_team_and_key_pages_show_this_months_cache_figures(admin_client, admin_user):
    tier = Tier.objects.create(name="free", cache_ttl_seconds=300)
    team, other = Team.objects.create(name="research"), Team.objects.create(name="other")
    first = api_key_issue(owner=admin_user, tier=tier, name="first", team=team).api_key
    second = api_key_issue(owner=admin_user, tier=tier, name="second", team=team).api_key
    loner = api_key_issue(owner=admin_user, tier=tier, name="loner").api_key
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    record("r1", api_key=first, team=team, cost="0.02")
    record("r2", api_key=first, team=team, hit=True, saved="0.02")
    record("r3", api_key=first, team=team, hit=True, saved="0.00000005")
    record("r4", api_key=second, team=team, cost="1")
    record("r5", api_key=second, team=team, hit=True, saved="1")
    record("r6", api_key=first, team=team, hit=True, saved="7", when=month_start - timedelta(seconds=1))
    record("r7", api_key=first, team=other, hit=True, saved="9")  # before the key moved teams
    record("r8", api_key=loner, hit=True, saved="0.5")
    cache_entries_put(scope=f"team:{team.pk}", model="m1", count=3)
    cache_entries_put(scope=f"team:{other.pk}", model="m1", count=2)
    cache_entries_put(scope=f"user:{admin_user.pk}", model="m1", count=1)

    with CaptureQueriesContext(connection) as queries:
        html = admin_client.get(url("team_change", team.pk)).content.decode()
    assert figures(html) == {
        "cache-hits": "3",
        "cache-calls": "5",
        "cache-ratio": "60.0%",
        "cache-saved": "1.02000005 USD",
        "cache-entries": "3",
    }
    assert f"answers cached now (team:{team.pk})" in html
    # The figures are one aggregate query, whatever the number of records.
    assert len([q for q in queries.captured_queries if "cache_hit" in q["sql"]]) == 1

    html = admin_client.get(url("apikey_change", first.pk)).content.decode()
    assert figures(html) == {
        "cache-hits": "3",
        "cache-calls": "4",
        "cache-ratio": "75.0%",
        "cache-saved": "9.02000005 USD",
        "cache-entries": "3",  # the team's scope, which the key shares
    }
    html = admin_client.get(url("apikey_change", loner.pk)).content.decode()
    assert figures(html) == {
        "cache-hits": "1",
        "cache-calls": "1",
        "cache-ratio": "100.0%",
        "cache-saved": "0.50 USD",
        "cache-entries": "1",
    }
    assert f"answers cached now (user:{admin_user.pk})" in html

    # A team with no calls yet: no ratio to show, nothing cached.
    html = admin_client.get(url("team_change", Team.objects.create(name="new").pk)).content.decode()
    assert figures(html) == {
        "cache-hits": "0",
        "cache-calls": "0",
        "cache-ratio": "-",
        "cache-saved": "0.00 USD",
        "cache-entries": "0",
    }


def test_team_purge_action_deletes_the_selected_teams_answers_only(admin_client, admin_user):
    research, ops, other = (Team.objects.create(name=name) for name in ("research", "ops", "other"))
    cache_entries_put(scope=f"team:{research.pk}", model="m1", count=3)
    cache_entries_put(scope=f"team:{research.pk}", model="m2", count=1)
    cache_entries_put(scope=f"team:{ops.pk}", model="m1", count=2)
    kept = set(cache_entries_put(scope=f"team:{other.pk}", model="m1", count=2))
    kept |= set(cache_entries_put(scope=f"user:{admin_user.pk}", model="m1", count=1))
    # A scope whose id starts like a selected team's is another scope.
    kept |= set(cache_entries_put(scope=f"team:{research.pk}0", model="m1", count=1))

    response = admin_client.post(
        url("team_changelist"),
        {"action": "purge_cached_answers", "_selected_action": [research.pk, ops.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["6 cached answer(s) of 2 team(s) deleted."]
    assert cache_keys_left() == kept


def test_team_purge_action_needs_the_change_permission(client):
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_team"))
    team = Team.objects.create(name="research")
    kept = set(cache_entries_put(scope=f"team:{team.pk}", model="m1", count=2))
    client.force_login(viewer)
    assert "purge_cached_answers" not in client.get(url("team_changelist")).content.decode()
    client.post(url("team_changelist"), {"action": "purge_cached_answers", "_selected_action": [team.pk]})
    assert cache_keys_left() == kept

    # May change teams: the action is offered and purges.
    viewer.user_permissions.add(Permission.objects.get(codename="change_team"))
    viewer = get_user_model().objects.get(pk=viewer.pk)  # permissions are cached on the user object
    client.force_login(viewer)
    assert "purge_cached_answers" in client.get(url("team_changelist")).content.decode()
    client.post(url("team_changelist"), {"action": "purge_cached_answers", "_selected_action": [team.pk]})
    assert cache_keys_left() == set()
