"""The audit trail: every change to providers, models, deployments, routing rules, tiers, teams, budgets, keys and
users, made in admin (as the logged-in user, over WSGI and ASGI), by the YAML import or by a management command
(as the command), is one entry with its before and after values; secrets read "changed" and their value, ciphertext
or hash is in no entry; the audit list is read-only, superusers included; API traffic writes no entry."""

import json
import logging
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import httpx
import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIHandler
from django.core.management import call_command
from django.test import AsyncClient
from django.urls import reverse

from accounts.models import ApiKey, Budget, Team, Tier
from accounts.services import api_key_issue
from aigateway.audit import SECRET_SHOWN
from providers.config_import import gateway_config_import
from providers.health import providers_health_check
from providers.models import Deployment, Model, Provider, RouteRule
from tests.support.data import key_create, model_create, provider_admin_form, provider_create
from tests.support.database import database_url_for_subprocess
from tests.support.waiting import eventually

UPSTREAM_OLD = "sk-upstream-audit-old-5c1d7e2a9b"
UPSTREAM_NEW = "sk-upstream-audit-new-8f3e6a0c4d"
UPSTREAM_YAML = "sk-upstream-audit-yaml-2b7c9d1e6f"
PROXY = "http://proxyuser:proxy-pass-7e1f9a@proxy.example.com:3128"
CLIENT_KEY = "-----BEGIN PRIVATE KEY-----\naudit-client-key-body-51c0\n-----END PRIVATE KEY-----"
PASSWORD = "pw-audit-ops-4b8e2f61"
MANAGE = Path(settings.BASE_DIR) / "manage.py"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def entries_of(obj) -> list[LogEntry]:
    """The object's entries, oldest first."""
    return list(LogEntry.objects.get_for_object(obj).order_by("timestamp", "pk"))


def last_entry(obj) -> LogEntry:
    return entries_of(obj)[-1]


def every_entry_as_text() -> str:
    """Every column of every audit entry, the JSON ones as stored."""
    columns = [field.attname for field in LogEntry._meta.concrete_fields]
    rows = []
    for row in LogEntry.objects.values_list(*columns):
        rows.append(" ".join(json.dumps(value, default=str) for value in row))
    return "\n".join(rows)


def provider_change_form(provider: Provider, *, api_key: str = "", **fields) -> dict:
    """The POST body of the provider's change page: its current values, `fields` changed."""
    current = {
        "name": provider.name,
        "base_url": provider.base_url,
        "timeout_connect": str(provider.timeout_connect),
        "timeout_read": str(provider.timeout_read),
        "max_connections": str(provider.max_connections),
    }
    return provider_admin_form(api_key, **{**current, **fields})


# Admin


@pytest.mark.django_db
def test_an_admin_change_of_a_provider_names_the_user_and_shows_before_after_with_the_key_changed(admin_client):
    admin = get_user_model().objects.get(username="admin")
    provider = provider_create("acme", "https://old.example.com/v1", api_key=UPSTREAM_OLD, timeout_read=120)
    old_ciphertext = provider.api_key_encrypted

    response = admin_client.post(
        reverse("admin:providers_provider_change", args=[provider.pk]),
        provider_change_form(provider, base_url="https://new.example.com/v1", timeout_read="45", api_key=UPSTREAM_NEW),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    provider.refresh_from_db()
    assert provider.base_url == "https://new.example.com/v1" and provider.api_key == UPSTREAM_NEW

    created, changed = entries_of(provider)
    assert created.action == LogEntry.Action.CREATE and created.actor is None
    assert changed.action == LogEntry.Action.UPDATE
    assert changed.actor == admin
    assert changed.additional_data == {"via": "admin"}
    assert changed.remote_addr == "127.0.0.1"
    assert changed.changes == {
        "base_url": ["https://old.example.com/v1", "https://new.example.com/v1"],
        "timeout_read": ["120.0", "45.0"],
        "api_key_encrypted": [SECRET_SHOWN, SECRET_SHOWN],
    }
    # The creation says a key was set, not which.
    assert created.changes["api_key_encrypted"] == ["", SECRET_SHOWN]
    assert "proxy_url_encrypted" not in created.changes  # none before, none after: no change

    # The provider's History page is its audit trail: who, before and after, the key "changed".
    history = admin_client.get(reverse("admin:providers_provider_history", args=[provider.pk]))
    assert history.status_code == 200
    html = history.content.decode()
    for shown in ("admin", "https://old.example.com/v1", "https://new.example.com/v1", "120.0", "45.0"):
        assert shown in html
    assert re.search(r"<td>API key</td><td>changed</td><td>changed</td>", html), html
    for secret in (UPSTREAM_OLD, UPSTREAM_NEW, old_ciphertext, provider.api_key_encrypted):
        assert secret not in html
        assert secret not in every_entry_as_text()


@pytest.mark.django_db
def test_admin_changes_to_tiers_teams_budgets_models_rules_deployments_and_users_are_each_recorded(admin_client):
    admin = get_user_model().objects.get(username="admin")
    ops = get_user_model().objects.create_user("ops", password=PASSWORD)
    provider = provider_create("acme", "https://acme.example.com/v1")
    model = model_create("fast", [(provider, "fast-v1", 0)])
    tier = Tier.objects.create(name="free", rpm=60)
    rule = RouteRule.objects.create(name="long", target=model, when={"min_prompt_tokens": 1000})
    deployment = Deployment.objects.get(model=model)

    def post(url: str, data: dict) -> None:
        response = admin_client.post(url, data)
        assert response.status_code == 302, response.content.decode()[:3000]

    post(
        reverse("admin:accounts_tier_change", args=[tier.pk]),
        {"name": "free", "rpm": "30", "allowed_models": [str(model.pk)], "max_compare_models": "4"},
    )
    post(
        reverse("admin:accounts_team_add"),
        {
            "name": "finance",
            "members": [str(ops.pk)],
            "budgets-TOTAL_FORMS": "1",
            "budgets-INITIAL_FORMS": "0",
            "budgets-0-period": "month",
            "budgets-0-amount": "5.00",
            "budgets-0-soft_thresholds": "[0.5, 1.0]",
            "budgets-0-enabled": "on",
            "api_keys-TOTAL_FORMS": "0",
            "api_keys-INITIAL_FORMS": "0",
        },
    )
    post(
        reverse("admin:providers_routerule_change", args=[rule.pk]),
        {"name": "long", "order": "0", "enabled": "on", "when": '{"min_prompt_tokens": 2000}', "target": model.pk,
         "share": "0.5"},
    )  # fmt: skip
    post(
        reverse("admin:providers_deployment_change", args=[deployment.pk]),
        {"model": model.pk, "provider": provider.pk, "upstream_model": "fast-v2", "priority": "0", "weight": "3",
         "enabled": "on"},
    )  # fmt: skip
    post(
        reverse("admin:auth_user_change", args=[ops.pk]),
        {"username": "ops", "is_active": "on", "is_staff": "on", "date_joined_0": "2026-01-01",
         "date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01", "initial-date_joined_1": "00:00:00"},
    )  # fmt: skip
    password_before = get_user_model().objects.get(pk=ops.pk).password
    post(
        reverse("admin:auth_user_password_change", args=[ops.pk]),
        {"password1": "pw-audit-new-0a9b8c7d", "password2": "pw-audit-new-0a9b8c7d", "usable_password": "true"},
    )
    post(reverse("admin:providers_model_delete", args=[Model.objects.create(name="gone").pk]), {"post": "yes"})

    tier_change, tier_models = entries_of(tier)[-2:]
    assert tier_change.changes == {"rpm": ["60", "30"]}
    assert tier_models.changes == {"allowed_models": {"type": "m2m", "operation": "add", "objects": ["fast"]}}
    team = Team.objects.get(name="finance")
    team_entries = entries_of(team)
    assert [entry.action for entry in team_entries] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert team_entries[1].changes == {"members": {"type": "m2m", "operation": "add", "objects": ["ops"]}}
    [budget_created] = entries_of(Budget.objects.get(team=team))
    assert budget_created.changes["amount"] == ["None", "5.00"]
    # One save in admin, one correlation id: the team, its members and its inline budget.
    assert {entry.cid for entry in [*team_entries, budget_created]} == {team_entries[0].cid}
    assert last_entry(rule).changes == {
        "when": ['{"min_prompt_tokens": 1000}', '{"min_prompt_tokens": 2000}'],
        "share": ["1.0", "0.5"],
    }
    assert last_entry(deployment).changes == {"upstream_model": ["fast-v1", "fast-v2"], "weight": ["1", "3"]}
    staff_change, password_change = entries_of(ops)[-2:]
    assert staff_change.changes["is_staff"] == ["False", "True"]
    assert password_change.changes == {"password": [SECRET_SHOWN, SECRET_SHOWN]}
    deleted = LogEntry.objects.get(object_repr="gone", action=LogEntry.Action.DELETE)
    assert deleted.changes["name"] == ["gone", "None"]

    entries = LogEntry.objects.exclude(actor=None)
    assert entries.count() >= 8 and set(entries.values_list("actor", flat=True)) == {admin.pk}
    text = every_entry_as_text()
    assert password_before not in text
    assert get_user_model().objects.get(pk=ops.pk).password not in text


@pytest.mark.django_db
def test_admin_key_issue_rotate_and_revoke_are_told_apart(admin_client):
    admin = get_user_model().objects.get(username="admin")
    tier = Tier.objects.create(name="free")
    response = admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"name": "partner", "owner": str(admin.pk), "tier": str(tier.pk), "enabled": "on", "expires_at_0": "",
         "expires_at_1": "", "budgets-TOTAL_FORMS": "0", "budgets-INITIAL_FORMS": "0", "_save": "Save"},
    )  # fmt: skip
    assert response.status_code == 302
    issued = ApiKey.objects.get(name="partner")
    [created] = entries_of(issued)
    assert (created.action, created.actor, created.additional_data) == (LogEntry.Action.CREATE, admin, {"via": "admin"})
    assert created.changes["key_hash"] == ["", SECRET_SHOWN]
    assert created.changes["name"] == ["None", "partner"]

    changelist = reverse("admin:accounts_apikey_changelist")
    response = admin_client.post(changelist, {"action": "rotate_keys", "_selected_action": [str(issued.pk)]})
    assert response.status_code == 200
    successor = ApiKey.objects.exclude(pk=issued.pk).get(name="partner")
    [successor_created] = entries_of(successor)
    old_updated = last_entry(issued)
    for entry in (successor_created, old_updated):
        assert entry.actor == admin and entry.additional_data == {"via": "admin", "action": "rotate_keys"}
    assert successor_created.action == LogEntry.Action.CREATE
    assert list(old_updated.changes) == ["expires_at"] and old_updated.changes["expires_at"][0] == "None"

    response = admin_client.post(changelist, {"action": "revoke_keys", "_selected_action": [str(successor.pk)]})
    assert response.status_code == 302
    revoked = last_entry(successor)
    assert revoked.additional_data == {"via": "admin", "action": "revoke_keys"}
    assert revoked.changes["enabled"] == ["True", "False"] and "expires_at" in revoked.changes

    text = every_entry_as_text()
    for key in ApiKey.objects.all():
        assert key.key_hash not in text


@pytest.mark.django_db(transaction=True)
async def test_over_asgi_admin_changes_name_the_user_and_no_middleware_is_adapted(caplog):
    """The gateway serves admin over ASGI: the audit middleware runs async (no thread hop) and the user still
    reaches the entries the sync admin view writes."""
    from asgiref.sync import sync_to_async

    caplog.set_level(logging.DEBUG, logger="django.request")
    ASGIHandler()  # builds the middleware chain for async requests
    user = await get_user_model().objects.acreate(username="ops", is_staff=True, is_superuser=True)
    provider = await sync_to_async(provider_create)("acme", "https://old.example.com/v1", api_key=UPSTREAM_OLD)
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.post(
        reverse("admin:providers_provider_change", args=[provider.pk]),
        provider_change_form(provider, base_url="https://asgi.example.com/v1"),
    )
    assert response.status_code == 302
    entry = await sync_to_async(last_entry)(provider)
    assert entry.actor_id == user.pk and entry.additional_data == {"via": "admin"}
    assert entry.changes == {"base_url": ["https://old.example.com/v1", "https://asgi.example.com/v1"]}
    adapted = [r.getMessage() for r in caplog.records if "adapted for middleware" in r.getMessage()]
    assert adapted == []


# The YAML import and management commands


YAML = """\
providers:
  - {{name: sim, dialect: openai, base_url: "{base_url}", api_key: "{api_key}", timeout_read: {timeout}}}
models:
  - name: fast
    deployments:
      - {{provider: sim, upstream_model: fast-v1}}
tiers:
  - {{name: free, rpm: 60, models: [fast]}}
routes:
  - {{name: long, when: {{min_prompt_tokens: 1000}}, use: fast}}
teams:
  - name: research
    budgets:
      - {{period: month, amount: 50}}
"""


@pytest.mark.django_db
def test_the_yaml_import_command_is_named_with_its_file_and_its_changes(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(YAML.format(base_url="https://one.example.com/v1", api_key=UPSTREAM_YAML, timeout=60))
    call_command("import_gateway_config", str(path), stdout=StringIO())
    first_run = list(LogEntry.objects.all())
    kinds = {entry.content_type.model for entry in first_run}
    assert kinds == {"provider", "model", "deployment", "tier", "routerule", "team", "budget"}
    for entry in first_run:
        assert entry.actor is None
        assert entry.additional_data == {"via": "manage.py import_gateway_config", "source": str(path)}
    assert len({entry.cid for entry in first_run}) == 1  # one run, one correlation id

    path.write_text(YAML.format(base_url="https://two.example.com/v1", api_key=UPSTREAM_NEW, timeout=30))
    call_command("import_gateway_config", str(path), stdout=StringIO())
    provider = Provider.objects.get(name="sim")
    assert last_entry(provider).changes == {
        "base_url": ["https://one.example.com/v1", "https://two.example.com/v1"],
        "timeout_read": ["60.0", "30.0"],
        "api_key_encrypted": [SECRET_SHOWN, SECRET_SHOWN],
    }
    # Nothing else changed, nothing else recorded.
    assert LogEntry.objects.count() == len(first_run) + 1
    text = every_entry_as_text()
    for secret in (UPSTREAM_YAML, UPSTREAM_NEW, provider.api_key_encrypted):
        assert secret not in text


@pytest.mark.django_db
def test_the_import_outside_a_command_names_its_source():
    gateway_config_import(
        data_text=YAML.format(base_url="https://one.example.com/v1", api_key=UPSTREAM_YAML, timeout=60),
        source_name="seed",
    )
    remarks = list(LogEntry.objects.values_list("additional_data", flat=True))
    assert len(remarks) == 8 and all(r == {"via": "YAML import", "source": "seed"} for r in remarks)


@pytest.mark.django_db
def test_key_commands_are_named_and_issue_rotate_and_revoke_told_apart():
    Tier.objects.create(name="free")
    out = StringIO()
    call_command("issue_key", "--tier", "free", "--name", "cli", "--budget", "5", stdout=out)
    plaintext = out.getvalue().strip().splitlines()[-1]
    issued = ApiKey.objects.get(name="cli")
    [created] = entries_of(issued)
    assert created.action == LogEntry.Action.CREATE and created.actor is None
    assert created.additional_data == {"via": "manage.py issue_key", "action": "issue"}
    [budget] = entries_of(Budget.objects.get(api_key=issued))
    assert budget.additional_data == created.additional_data and budget.cid == created.cid

    out = StringIO()
    call_command("rotate_key", str(issued.pk), "--grace-hours", "2", stdout=out)
    rotated_plaintext = out.getvalue().strip().splitlines()[-1]
    successor = ApiKey.objects.exclude(pk=issued.pk).get(name="cli")
    rotate = {"via": "manage.py rotate_key", "action": "rotate"}
    [successor_created] = entries_of(successor)
    assert successor_created.action == LogEntry.Action.CREATE and successor_created.additional_data == rotate
    old_updated = last_entry(issued)
    assert old_updated.additional_data == rotate and list(old_updated.changes) == ["expires_at"]

    call_command("revoke_key", str(successor.pk), stdout=StringIO())
    revoked = last_entry(successor)
    assert revoked.additional_data == {"via": "manage.py revoke_key", "action": "revoke"}
    assert revoked.changes["enabled"] == ["True", "False"]

    text = every_entry_as_text()
    for secret in (plaintext, rotated_plaintext, issued.key_hash, successor.key_hash):
        assert secret not in text


@pytest.mark.django_db
def test_re_encrypting_provider_secrets_is_recorded_as_changed(settings):
    settings.PROVIDER_SECRET_KEY = "old-audit-secret-key-1a2b"
    provider = provider_create("acme", "https://acme.example.com/v1", api_key=UPSTREAM_OLD)
    provider.proxy_url = PROXY
    provider.save()
    provider_create("keyless", "https://keyless.example.com/v1", api_key="")
    before = Provider.objects.get(pk=provider.pk)
    settings.PROVIDER_SECRET_KEY = "new-audit-secret-key-3c4d,old-audit-secret-key-1a2b"
    call_command("rotate_provider_secrets", stdout=StringIO())
    after = Provider.objects.get(pk=provider.pk)
    assert after.api_key_encrypted != before.api_key_encrypted and after.api_key == UPSTREAM_OLD

    entry = last_entry(provider)
    assert entry.additional_data == {"via": "manage.py rotate_provider_secrets", "action": "re-encrypt"}
    assert entry.changes == {
        "api_key_encrypted": [SECRET_SHOWN, SECRET_SHOWN],
        "proxy_url_encrypted": [SECRET_SHOWN, SECRET_SHOWN],
    }
    assert last_entry(Provider.objects.get(name="keyless")).action == LogEntry.Action.CREATE
    text = every_entry_as_text()
    for secret in (UPSTREAM_OLD, PROXY, "proxy-pass-7e1f9a", before.api_key_encrypted, after.api_key_encrypted,
                   before.proxy_url_encrypted, after.proxy_url_encrypted):  # fmt: skip
        assert secret not in text


@pytest.mark.django_db
def test_every_secret_field_reads_changed_set_replaced_and_cleared_never_its_value():
    provider = provider_create("acme", "https://acme.example.com/v1", api_key="")
    seen = set()
    steps = [
        {"api_key": UPSTREAM_OLD, "proxy_url": PROXY, "client_key": CLIENT_KEY},
        {"api_key": UPSTREAM_NEW, "proxy_url": PROXY + "0", "client_key": CLIENT_KEY + "\n"},
        {"api_key": "", "proxy_url": "", "client_key": ""},
    ]
    for values in steps:
        for name, value in values.items():
            setattr(provider, name, value)
        provider.save()
        seen.update(
            [provider.api_key_encrypted, provider.proxy_url_encrypted, provider.client_key_encrypted, *values.values()]
        )
    set_, replaced, cleared = [entry.changes for entry in entries_of(provider)[1:]]
    fields = ["api_key_encrypted", "proxy_url_encrypted", "client_key_encrypted"]
    assert set_ == {field: ["", SECRET_SHOWN] for field in fields}
    assert replaced == {field: [SECRET_SHOWN, SECRET_SHOWN] for field in fields}
    assert cleared == {field: [SECRET_SHOWN, ""] for field in fields}
    text = every_entry_as_text()
    for secret in seen - {""}:
        assert secret not in text
    assert "proxy-pass-7e1f9a" not in text and "audit-client-key-body" not in text
    assert not LogEntry.objects.exclude(serialized_data=None).exists()


@pytest.mark.django_db(transaction=True)
def test_a_command_without_an_audit_context_of_its_own_is_named_by_the_process(tmp_path):
    """`manage.py createsuperuser`, `changepassword` or `shell` run by an operator are named as such."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    subprocess.run(
        [sys.executable, str(MANAGE), "createsuperuser", "--noinput", "--username", "root", "--email", "r@example.com"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    root = get_user_model().objects.get(username="root")
    [created] = entries_of(root)
    assert created.actor is None and created.additional_data == {"via": "manage.py createsuperuser"}
    assert created.changes["is_superuser"] == ["None", "True"]
    assert created.changes["password"] == ["", SECRET_SHOWN] and root.password not in every_entry_as_text()


# The audit list


@pytest.mark.django_db
def test_the_audit_list_is_read_only_even_for_a_superuser(admin_client):
    provider = provider_create("acme", "https://acme.example.com/v1", api_key=UPSTREAM_OLD)
    entry = last_entry(provider)
    changelist = reverse("admin:auditlog_logentry_changelist")
    page = admin_client.get(changelist)
    assert page.status_code == 200
    html = page.content.decode()
    assert "acme" in html and "delete_selected" not in html
    assert admin_client.get(reverse("admin:auditlog_logentry_add")).status_code == 403
    detail = admin_client.get(reverse("admin:auditlog_logentry_change", args=[entry.pk]))
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert "https://acme.example.com/v1" in detail.content.decode()

    before = list(LogEntry.objects.values_list("pk", "changes", "actor_id", "timestamp"))
    edited = admin_client.post(
        reverse("admin:auditlog_logentry_change", args=[entry.pk]), {"object_repr": "forged", "action": "2"}
    )
    assert edited.status_code == 403
    deleted = admin_client.post(reverse("admin:auditlog_logentry_delete", args=[entry.pk]), {"post": "yes"})
    assert deleted.status_code == 403
    bulk = admin_client.post(
        changelist, {"action": "delete_selected", "_selected_action": [str(entry.pk)], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)
    assert list(LogEntry.objects.values_list("pk", "changes", "actor_id", "timestamp")) == before


# Not on the request path


@pytest.mark.django_db(transaction=True)
def test_api_traffic_the_usage_flush_and_health_checks_write_no_audit_entry(gateway, fresh_simulator, celery_worker):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("audit-fast", [(sim, "sim-echo?tokens=5", 0)])
    plaintext = key_create("audit-tier")
    key = ApiKey.objects.get(name="audit-tier-key")
    celery_worker(beat=True, flush_seconds=0.3)
    entries_before = LogEntry.objects.count()

    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for index in range(5):
            response = client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {plaintext}"},
                json={"model": "audit-fast", "messages": [{"role": "user", "content": f"hi {index}"}]},
            )
            assert response.status_code == 200, response.text
    eventually(lambda: ApiKey.objects.get(pk=key.pk).last_used_at is not None, timeout=20, what="the usage flush")
    providers_health_check(provider_ids=[sim.pk])
    assert Provider.objects.get(pk=sim.pk).health_checked_at is not None
    assert LogEntry.objects.count() == entries_before


@pytest.mark.django_db
def test_a_key_issued_in_code_outside_any_context_is_still_recorded():
    owner = get_user_model().objects.create_user("svc")
    issued = api_key_issue(owner=owner, tier=Tier.objects.create(name="t"), name="code").api_key
    [created] = entries_of(issued)
    assert created.action == LogEntry.Action.CREATE and created.actor is None


@pytest.mark.django_db
def test_traffic_and_health_fields_are_not_audited_even_when_saved_one_by_one():
    """A key's last use and a provider's health are written by the usage flush and the health check (queryset
    updates today); saved through the model, they still make no entry."""
    from django.utils import timezone

    provider = provider_create("acme", "https://acme.example.com/v1")
    key_create("t")
    key = ApiKey.objects.get()
    entries = LogEntry.objects.count()
    key.last_used_at = timezone.now()
    key.save(update_fields=["last_used_at"])
    provider.health_status, provider.health_checked_at, provider.health_latency_ms = "up", timezone.now(), 12.5
    provider.health_consecutive_failures, provider.health_last_error = 3, "boom"
    provider.save()
    assert LogEntry.objects.count() == entries
    created = entries_of(provider)[0].changes
    assert not {"health_status", "created_at", "updated_at", "deployments", "health_checks"} & set(created)


@pytest.mark.django_db
def test_a_playground_key_made_for_a_staff_user_names_that_user():
    from accounts.services import playground_key_get_or_create

    staff = get_user_model().objects.create_user("pat", is_staff=True)
    api_key = playground_key_get_or_create(user=staff)
    (created,) = [e for e in LogEntry.objects.get_for_object(api_key) if e.action == LogEntry.Action.CREATE]
    assert created.actor == staff and created.additional_data.get("via") == "playground"
