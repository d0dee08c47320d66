"""Accounts admin: pages render, keys are issued from the add form and shown exactly once,
enable/disable actions, read-only usage."""

import re
from datetime import date

import pytest
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from accounts.keys import key_generate, key_hash, key_matches
from accounts.models import ApiKey, Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue
from aigateway.config_version import CONFIG_VERSION_KEY
from aigateway.redis import redis_sync
from providers.models import Model

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"sk-gw-[A-Za-z0-9_-]{20,}")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def accounts_data(admin_user):
    tier = Tier.objects.create(name="free", rpm=60, tpm=None)
    issued = api_key_issue(owner=admin_user, tier=tier, name="ci")
    record = UsageRecord.objects.create(
        request_id="req-123",
        api_key=issued.api_key,
        model="gpt-x",
        provider="acme",
        endpoint="chat.completions",
        status_code=200,
        prompt_tokens=10,
        completion_tokens=20,
        created_at=timezone.now(),
    )
    daily = UsageDaily.objects.create(date=date.today(), api_key=issued.api_key, model="gpt-x", requests=1)
    return {
        "tier": tier,
        "apikey": issued.api_key,
        "usagerecord": record,
        "usagedaily": daily,
        "plaintext": issued.plaintext,
    }


def admin_url(name: str, *args) -> str:
    return reverse(f"admin:accounts_{name}", args=args)


def api_key_post_data(owner, tier, **overrides) -> dict:
    data = {
        "name": "partner",
        "owner": str(owner.pk),
        "tier": str(tier.pk),
        "enabled": "on",
        "expires_at_0": "",
        "expires_at_1": "",
        "rpm": "",
        "tpm": "",
        "max_concurrent": "",
        "daily_tokens": "",
        "max_output_tokens": "",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("model_name", "add_status"),
    [("tier", 200), ("apikey", 200), ("usagerecord", 403), ("usagedaily", 403)],
)
def test_every_page_renders(admin_client, accounts_data, model_name, add_status):
    obj = accounts_data[model_name]
    changelist = admin_client.get(admin_url(f"{model_name}_changelist"))
    assert changelist.status_code == 200
    assert obj in changelist.context["cl"].result_list
    assert admin_client.get(admin_url(f"{model_name}_add")).status_code == add_status
    assert admin_client.get(admin_url(f"{model_name}_change", obj.pk)).status_code == 200
    assert admin_client.get(admin_url(f"{model_name}_history", obj.pk)).status_code == 200


def test_tier_changelist_shows_blank_limits_as_unlimited(admin_client, accounts_data):
    html = admin_client.get(admin_url("tier_changelist")).content.decode()
    assert 'class="field-rpm">60<' in html
    assert 'class="field-tpm">unlimited<' in html
    assert 'class="field-models_allowed">all<' in html


def test_tier_edit_sets_limits_and_allowed_models(admin_client, accounts_data):
    tier = accounts_data["tier"]
    fast = Model.objects.create(name="sim-fast")
    Model.objects.create(name="sim-slow")
    data = {
        "name": "free",
        "rpm": "30",
        "tpm": "",
        "max_concurrent": "2",
        "daily_tokens": "",
        "max_output_tokens": "",
        "max_compare_models": "4",
        "allowed_models": [str(fast.pk)],
        "_save": "Save",
    }
    response = admin_client.post(admin_url("tier_change", tier.pk), data)
    assert response.status_code == 302
    tier.refresh_from_db()
    assert (tier.rpm, tier.tpm, tier.max_concurrent) == (30, None, 2)
    assert list(tier.allowed_models.values_list("name", flat=True)) == ["sim-fast"]
    html = admin_client.get(admin_url("tier_change", tier.pk)).content.decode()
    assert "selectfilter" in html.lower()


def test_api_key_changelist_columns_filters_and_search(admin_client, accounts_data, admin_user):
    pro = Tier.objects.create(name="pro")
    api_key_issue(owner=admin_user, tier=pro, name="partner-two", enabled=False)
    response = admin_client.get(admin_url("apikey_changelist"))
    html = response.content.decode()
    for header in ("Prefix", "Owner", "Tier", "Expires at", "Last used at"):
        assert header in html
    assert accounts_data["apikey"].prefix in html
    by_tier = admin_client.get(admin_url("apikey_changelist"), {"tier__id__exact": pro.pk})
    assert [k.name for k in by_tier.context["cl"].result_list] == ["partner-two"]
    disabled = admin_client.get(admin_url("apikey_changelist"), {"enabled__exact": "0"})
    assert [k.name for k in disabled.context["cl"].result_list] == ["partner-two"]
    by_owner = admin_client.get(admin_url("apikey_changelist"), {"q": admin_user.username})
    assert len(by_owner.context["cl"].result_list) == 2
    by_prefix = admin_client.get(admin_url("apikey_changelist"), {"q": accounts_data["apikey"].prefix})
    assert [k.name for k in by_prefix.context["cl"].result_list] == ["ci"]


def test_api_key_pages_never_show_the_hash(admin_client, accounts_data):
    api_key = accounts_data["apikey"]
    for url in (admin_url("apikey_changelist"), admin_url("apikey_change", api_key.pk)):
        html = admin_client.get(url).content.decode()
        assert api_key.key_hash not in html
        assert accounts_data["plaintext"] not in html


def test_adding_a_key_issues_it_and_shows_the_plaintext_once(admin_client, accounts_data, admin_user):
    tier = accounts_data["tier"]
    response = admin_client.post(admin_url("apikey_add"), api_key_post_data(admin_user, tier, rpm="5"), follow=True)

    assert response.status_code == 200
    assert len(response.redirect_chain) == 1
    html = response.content.decode()
    shown = KEY_RE.findall(html)
    assert len(shown) == 1
    plaintext = shown[0]
    assert "only time it is shown" in html
    assert "no-store" in response["Cache-Control"]

    api_key = ApiKey.objects.get(name="partner")
    assert key_matches(plaintext, api_key.key_hash)
    assert api_key.prefix == plaintext[:12]
    assert (api_key.owner, api_key.tier, api_key.rpm, api_key.enabled) == (admin_user, tier, 5, True)
    assert reverse("admin:accounts_apikey_change", args=[api_key.pk]) in html

    # Nothing carries it further: no flash message, nothing in the session, not on any later page.
    assert list(get_messages(response.wsgi_request)) == []
    for session in Session.objects.all():
        assert plaintext not in str(session.get_decoded())
    for url in (
        admin_url("apikey_changelist"),
        admin_url("apikey_change", api_key.pk),
        admin_url("apikey_history", api_key.pk),
        reverse("admin:index"),
    ):
        assert plaintext not in admin_client.get(url).content.decode()


def test_add_form_defaults_the_owner_to_the_signed_in_user(admin_client, admin_user):
    response = admin_client.get(admin_url("apikey_add"))
    assert response.context["adminform"].form.initial["owner"] == admin_user.pk


def test_key_and_hash_cannot_be_set_from_the_add_form(admin_client, accounts_data, admin_user):
    chosen = key_generate()  # a well-formed key the browser made up
    data = api_key_post_data(admin_user, accounts_data["tier"], key_hash=key_hash(chosen), prefix="sk-gw-chosen")
    admin_client.post(admin_url("apikey_add"), data)
    api_key = ApiKey.objects.get(name="partner")
    assert api_key.key_hash != key_hash(chosen)
    assert api_key.prefix != "sk-gw-chosen"


def test_invalid_add_form_issues_nothing(admin_client, accounts_data, admin_user):
    response = admin_client.post(admin_url("apikey_add"), api_key_post_data(admin_user, accounts_data["tier"], name=""))
    assert response.status_code == 200
    assert KEY_RE.search(response.content.decode()) is None
    assert not ApiKey.objects.filter(name="partner").exists()
    assert ApiKey.objects.count() == 1


def test_editing_a_key_keeps_its_hash_owner_and_prefix(admin_client, accounts_data, admin_user):
    api_key = accounts_data["apikey"]
    other = type(admin_user).objects.create_user(username="someone-else")
    data = api_key_post_data(other, accounts_data["tier"], name="renamed", prefix="x")
    response = admin_client.post(admin_url("apikey_change", api_key.pk), data)
    assert response.status_code == 302
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert stored.name == "renamed"
    assert (stored.key_hash, stored.prefix, stored.owner) == (api_key.key_hash, api_key.prefix, admin_user)
    assert key_matches(accounts_data["plaintext"], stored.key_hash)


def test_disable_and_enable_actions(admin_client, accounts_data, admin_user, django_capture_on_commit_callbacks):
    second = api_key_issue(owner=admin_user, tier=accounts_data["tier"], name="second").api_key
    selected = [str(accounts_data["apikey"].pk), str(second.pk)]
    before = redis_sync().get(CONFIG_VERSION_KEY)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            admin_url("apikey_changelist"), {"action": "disable_keys", "_selected_action": selected}, follow=True
        )
    assert "2 API key(s) disabled." in response.content.decode()
    assert not ApiKey.objects.filter(enabled=True).exists()
    assert redis_sync().get(CONFIG_VERSION_KEY) not in (None, before)

    response = admin_client.post(
        admin_url("apikey_changelist"), {"action": "enable_keys", "_selected_action": selected[:1]}, follow=True
    )
    assert "1 API key(s) enabled." in response.content.decode()
    assert list(ApiKey.objects.filter(enabled=True)) == [accounts_data["apikey"]]


def test_usage_is_read_only(admin_client, accounts_data):
    record = accounts_data["usagerecord"]
    html = admin_client.get(admin_url("usagerecord_change", record.pk)).content.decode()
    assert 'name="_save"' not in html
    assert "req-123" in html
    response = admin_client.post(admin_url("usagerecord_change", record.pk), {"status_code": "500"})
    assert response.status_code == 403
    assert admin_client.post(admin_url("usagerecord_delete", record.pk), {"post": "yes"}).status_code == 403
    assert UsageRecord.objects.get(pk=record.pk).status_code == 200
    assert admin_client.get(admin_url("usagedaily_delete", accounts_data["usagedaily"].pk)).status_code == 403


def test_usage_changelist_filters_and_search(admin_client, accounts_data):
    UsageRecord.objects.create(
        request_id="req-456",
        model="other",
        provider="elsewhere",
        endpoint="messages",
        status_code=502,
        stream=True,
        created_at=timezone.now(),
    )
    changelist = admin_url("usagerecord_changelist")
    assert [r.request_id for r in admin_client.get(changelist, {"status_code": "502"}).context["cl"].result_list] == [
        "req-456"
    ]
    assert [r.request_id for r in admin_client.get(changelist, {"stream__exact": "0"}).context["cl"].result_list] == [
        "req-123"
    ]
    assert [r.request_id for r in admin_client.get(changelist, {"q": "req-45"}).context["cl"].result_list] == [
        "req-456"
    ]
    assert [r.request_id for r in admin_client.get(changelist, {"model": "gpt-x"}).context["cl"].result_list] == [
        "req-123"
    ]
