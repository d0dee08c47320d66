"""Rotating and revoking API keys: `manage.py rotate_key` / `revoke_key`, the admin actions, and what a
client of a real gateway process sees during and after the grace period."""

import re
import time
from datetime import timedelta
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from accounts.keys import key_hash
from accounts.models import ApiKey, Tier
from accounts.services import api_key_issue, service_user_get_or_create

KEY_RE = re.compile(r"sk-gw-[A-Za-z0-9_-]{43}")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def issued(db):
    tier = Tier.objects.create(name="rotation", rpm=100)
    return api_key_issue(owner=service_user_get_or_create(), tier=tier, name="ci-bot", rpm=7, daily_tokens=1000)


def rotate(*args) -> tuple[str, str]:
    out = StringIO()
    call_command("rotate_key", *args, stdout=out)
    text = out.getvalue()
    return text, text.strip().splitlines()[-1]


def test_rotate_key_issues_a_successor_and_gives_the_old_key_the_default_grace(issued, settings):
    settings.GATEWAY_KEY_ROTATION_GRACE_HOURS = 24
    before = timezone.now()
    text, plaintext = rotate(issued.api_key.prefix)

    assert KEY_RE.fullmatch(plaintext) and plaintext != issued.plaintext
    assert text.count(plaintext) == 1
    assert issued.plaintext not in text
    new = ApiKey.objects.get(key_hash=key_hash(plaintext))
    old = ApiKey.objects.get(pk=issued.api_key.pk)
    assert (new.owner, new.tier, new.name, new.rpm, new.daily_tokens) == (old.owner, old.tier, "ci-bot", 7, 1000)
    assert new.expires_at is None and new.enabled
    assert old.enabled
    assert before + timedelta(hours=24) <= old.expires_at <= timezone.now() + timedelta(hours=24)
    assert f"Old key {old.prefix}... (id {old.pk}) keeps working until" in text


def test_rotate_key_by_id_with_grace_hours_and_expiry(issued):
    text, plaintext = rotate(str(issued.api_key.pk), "--grace-hours", "2", "--expires-days", "30")
    new = ApiKey.objects.get(key_hash=key_hash(plaintext))
    old = ApiKey.objects.get(pk=issued.api_key.pk)
    assert abs((old.expires_at - timezone.now()) - timedelta(hours=2)) < timedelta(minutes=1)
    assert abs((new.expires_at - timezone.now()) - timedelta(days=30)) < timedelta(minutes=1)


def test_rotate_key_with_no_grace_revokes_the_old_key_now(issued):
    text, _ = rotate(issued.api_key.prefix, "--grace-hours", "0")
    old = ApiKey.objects.get(pk=issued.api_key.pk)
    assert not old.enabled and old.expires_at <= timezone.now()
    assert "is revoked" in text


def test_rotation_never_extends_the_old_key_nor_the_new_one_past_the_old_expiry(issued):
    soon = timezone.now() + timedelta(hours=1)
    ApiKey.objects.filter(pk=issued.api_key.pk).update(expires_at=soon)
    _, plaintext = rotate(issued.api_key.prefix, "--grace-hours", "48")
    assert ApiKey.objects.get(pk=issued.api_key.pk).expires_at == soon
    assert ApiKey.objects.get(key_hash=key_hash(plaintext)).expires_at == soon


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["999999"], "no API key with id 999999"),
        (["sk-gw-ZZZZZZ"], "no API key with prefix sk-gw-ZZZZZZ"),
        (["sk-gw"], "give a key's id or its display prefix"),
        (["ci-bot"], "give a key's id or its display prefix"),
        (["PREFIX", "--grace-hours", "-1"], "must be between 0 and 8784 hours"),
        (["PREFIX", "--grace-hours", "soon"], "is not a number of hours"),
        (["PREFIX", "--expires-days", "0"], "must be at least 1 day"),
    ],
)
def test_rotate_key_bad_input_is_a_clear_error(issued, args, message):
    args = [issued.api_key.prefix if a == "PREFIX" else a for a in args]
    with pytest.raises(CommandError) as excinfo:
        call_command("rotate_key", *args, stdout=StringIO())
    assert message in str(excinfo.value)


def test_rotate_key_refuses_a_disabled_or_expired_key(issued):
    ApiKey.objects.filter(pk=issued.api_key.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    with pytest.raises(CommandError, match="has expired; give the new key an expiry"):
        call_command("rotate_key", issued.api_key.prefix, stdout=StringIO())
    _, plaintext = rotate(issued.api_key.prefix, "--expires-days", "5")
    assert ApiKey.objects.filter(key_hash=key_hash(plaintext)).exists()

    ApiKey.objects.filter(pk=issued.api_key.pk).update(enabled=False)
    with pytest.raises(CommandError, match="is disabled"):
        call_command("rotate_key", str(issued.api_key.pk), stdout=StringIO())


def test_an_ambiguous_prefix_lists_the_candidates(issued):
    other = api_key_issue(owner=issued.api_key.owner, tier=issued.api_key.tier, name="twin")
    ApiKey.objects.filter(pk=other.api_key.pk).update(prefix=issued.api_key.prefix)
    with pytest.raises(CommandError) as excinfo:
        call_command("revoke_key", issued.api_key.prefix, stdout=StringIO())
    assert f"id {issued.api_key.pk}" in str(excinfo.value) and f"id {other.api_key.pk}" in str(excinfo.value)


def test_revoke_key_disables_and_expires_for_good(issued):
    out = StringIO()
    call_command("revoke_key", issued.api_key.prefix, stdout=out)
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert not key.enabled and key.expires_at <= timezone.now()
    assert f"Revoked API key {key.prefix}..." in out.getvalue()
    assert issued.plaintext not in out.getvalue()


def test_admin_rotate_action_shows_each_new_key_once(admin_client, admin_user, issued):
    second = api_key_issue(owner=admin_user, tier=issued.api_key.tier, name="second")
    changelist = reverse("admin:accounts_apikey_changelist")
    response = admin_client.post(
        changelist,
        {"action": "rotate_keys", "_selected_action": [issued.api_key.pk, second.api_key.pk]},
    )
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    html = response.content.decode()
    shown = KEY_RE.findall(html)
    assert len(shown) == 2
    new_keys = [ApiKey.objects.get(key_hash=key_hash(plaintext)) for plaintext in shown]
    assert sorted(k.name for k in new_keys) == ["ci-bot", "second"]
    assert issued.plaintext not in html and second.plaintext not in html
    for old in (issued.api_key, second.api_key):
        old.refresh_from_db()
        assert old.enabled and old.expires_at > timezone.now()

    # Never again: not on the changelist, the change pages or the history.
    pages = [changelist] + [reverse("admin:accounts_apikey_change", args=[k.pk]) for k in new_keys]
    pages += [reverse("admin:accounts_apikey_history", args=[k.pk]) for k in new_keys]
    for url in pages:
        page = admin_client.get(url).content.decode()
        for plaintext in shown:
            assert plaintext not in page, url


def test_admin_rotate_action_reports_keys_it_cannot_rotate(admin_client, issued):
    ApiKey.objects.filter(pk=issued.api_key.pk).update(enabled=False)
    response = admin_client.post(
        reverse("admin:accounts_apikey_changelist"), {"action": "rotate_keys", "_selected_action": [issued.api_key.pk]}
    )
    assert response.status_code == 200
    assert "is disabled" in response.content.decode()
    assert not KEY_RE.findall(response.content.decode())
    assert ApiKey.objects.count() == 1


def test_admin_revoke_action(admin_client, issued):
    response = admin_client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [issued.api_key.pk]},
        follow=True,
    )
    assert "1 API key(s) revoked." in response.content.decode()
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert not key.enabled and key.expires_at <= timezone.now()


def models_status(gateway, key: str) -> int:
    return httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code


@pytest.mark.django_db(transaction=True)
def test_over_the_gateway_the_old_key_works_for_the_grace_period_then_stops(gateway_factory):
    tier = Tier.objects.create(name="rotation-e2e")
    old = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="rotating")
    gateway = gateway_factory()
    assert models_status(gateway, old.plaintext) == 200  # now cached in the gateway process

    # About 3 seconds of grace.
    started = time.monotonic()
    _, new_plaintext = rotate(str(old.api_key.pk), "--grace-hours", "0.000833")
    assert models_status(gateway, new_plaintext) == 200
    assert models_status(gateway, old.plaintext) == 200
    assert time.monotonic() - started < 2.5, "too slow to observe the grace period"
    time.sleep(max(0.0, 3.2 - (time.monotonic() - started)))
    assert models_status(gateway, old.plaintext) == 401
    assert models_status(gateway, new_plaintext) == 200

    call_command("revoke_key", str(ApiKey.objects.get(key_hash=key_hash(new_plaintext)).pk), stdout=StringIO())
    deadline = time.monotonic() + 5
    while models_status(gateway, new_plaintext) != 401:
        assert time.monotonic() < deadline, "a revoked key still worked after 5 s"
        time.sleep(0.1)


def test_a_rotated_key_keeps_its_team_cache_ttl_and_log_setting(issued):
    from accounts.models import Team
    from accounts.services import api_key_rotate

    old = issued.api_key
    old.team = Team.objects.create(name="rotating-team")
    old.cache_ttl_seconds = 45
    old.log_bodies = "metadata"
    old.save()
    rotated = api_key_rotate(api_key=old, grace=timedelta(0))
    assert rotated.new_key.team == old.team and rotated.new_key.cache_ttl_seconds == 45
    assert rotated.new_key.log_bodies == "metadata"
    assert (rotated.new_key.rpm, rotated.new_key.daily_tokens) == (7, 1000)
