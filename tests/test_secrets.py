"""No plaintext secret (our API keys or providers' keys) in the database, admin pages, logs or errors,
after creating them every supported way: config import, issue_key, and the admin."""

import logging
import re
from dataclasses import dataclass, field
from io import StringIO

import pytest
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.urls import reverse

from accounts.models import ApiKey, Tier
from providers.models import Provider
from tests.support.data import provider_admin_form

pytestmark = pytest.mark.django_db

UPSTREAM_INLINE = "sk-upstream-inline-SECRET-5a4b3c2d1e"
UPSTREAM_ENV = "sk-upstream-env-SECRET-9f8e7d6c5b"
UPSTREAM_ADMIN = "sk-upstream-admin-SECRET-0a1b2c3d4e"
UPSTREAM_IN_BAD_FILE = "sk-upstream-badfile-SECRET-77665544"
KEY_RE = re.compile(r"sk-gw-[A-Za-z0-9_-]{20,}")

CONFIG = f"""\
providers:
  - {{name: inline, base_url: "https://inline.example.com/v1", api_key: "{UPSTREAM_INLINE}"}}
  - {{name: from-env, dialect: anthropic, base_url: "https://env.example.com", api_key_env: GW_TEST_UPSTREAM}}
models:
  - name: gpt-x
    deployments:
      - {{provider: inline, upstream_model: gpt-x}}
      - {{provider: from-env, upstream_model: claude-x, priority: 1}}
tiers:
  - {{name: free, rpm: 60, models: [gpt-x]}}
"""

BAD_CONFIG = f"""\
providers:
  - name: inline
    base_url: not-a-url
    api_key: {UPSTREAM_IN_BAD_FILE}
    timeout_read: -5
"""


@dataclass
class SecretsCreated:
    upstream_keys: list[str]
    gateway_keys: list[str]
    errors: list[str] = field(default_factory=list)

    @property
    def plaintexts(self) -> list[str]:
        return [*self.upstream_keys, *self.gateway_keys]


@pytest.fixture
def sql_logged():
    """Log every SQL statement with its parameters, as with DEBUG=True."""
    db = connections["default"]
    previous = db.force_debug_cursor
    db.force_debug_cursor = True
    yield
    db.force_debug_cursor = previous


@pytest.fixture
def created(admin_client, admin_user, monkeypatch, caplog, settings, tmp_path, sql_logged):
    """Create secrets through every path, with all logging (SQL included) captured at DEBUG."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    monkeypatch.setenv("GW_TEST_UPSTREAM", UPSTREAM_ENV)

    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(CONFIG)
    call_command("import_gateway_config", str(config_path), stdout=StringIO())

    out = StringIO()
    call_command("issue_key", "--tier", "free", "--name", "cli", stdout=out)
    cli_key = out.getvalue().splitlines()[-1]

    provider_form = provider_admin_form(UPSTREAM_ADMIN)
    rejected = admin_client.post(reverse("admin:providers_provider_add"), {**provider_form, "base_url": "nope"})
    assert rejected.status_code == 200
    assert admin_client.post(reverse("admin:providers_provider_add"), provider_form).status_code == 302

    tier = Tier.objects.get(name="free")
    issued_page = admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"name": "via-admin", "owner": admin_user.pk, "tier": tier.pk, "enabled": "on", "_save": "Save"},
        follow=True,
    )
    admin_key = KEY_RE.findall(issued_page.content.decode())[0]

    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(BAD_CONFIG)
    with pytest.raises(CommandError) as excinfo:
        call_command("import_gateway_config", str(bad_path), stdout=StringIO())

    return SecretsCreated(
        upstream_keys=[UPSTREAM_INLINE, UPSTREAM_ENV, UPSTREAM_ADMIN, UPSTREAM_IN_BAD_FILE],
        gateway_keys=[cli_key, admin_key],
        errors=[str(excinfo.value), rejected.content.decode()],
    )


def database_dump() -> str:
    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            parts.append(f"{table}: {cursor.fetchall()!r}")
    # Session rows are signed and compressed; look inside them too.
    parts.extend(repr(session.get_decoded()) for session in Session.objects.all())
    return "\n".join(parts)


def test_the_setup_really_stored_the_secrets(created):
    providers = {p.name: p for p in Provider.objects.all()}
    assert providers["inline"].api_key == UPSTREAM_INLINE
    assert providers["from-env"].api_key == UPSTREAM_ENV
    assert providers["via-admin"].api_key == UPSTREAM_ADMIN
    assert ApiKey.objects.count() == 2
    assert "api_key must" not in created.errors[0]
    assert "base_url" in created.errors[0]


def test_database_holds_no_plaintext_secret(created):
    dump = database_dump()
    assert "providers_provider" in dump and "django_session" in dump
    for api_key in ApiKey.objects.all():
        assert api_key.prefix in dump
    for secret in created.plaintexts:
        assert secret not in dump


def test_admin_pages_show_no_secret_nor_ciphertext(admin_client, created):
    urls = [reverse("admin:index")]
    for name in ("providers_provider", "accounts_apikey"):
        urls.append(reverse(f"admin:{name}_changelist"))
    for provider in Provider.objects.all():
        for view in ("change", "history", "delete"):
            urls.append(reverse(f"admin:providers_provider_{view}", args=[provider.pk]))
    for api_key in ApiKey.objects.all():
        for view in ("change", "history"):  # keys are revoked, never deleted: no delete page
            urls.append(reverse(f"admin:accounts_apikey_{view}", args=[api_key.pk]))
    urls.append(reverse("admin:providers_deployment_changelist"))

    ciphertexts = [p.api_key_encrypted for p in Provider.objects.all()]
    hashes = [k.key_hash for k in ApiKey.objects.all()]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        for secret in [*created.plaintexts, *ciphertexts, *hashes]:
            assert secret not in html, url


def test_logs_hold_no_secret(created, caplog):
    records = caplog.get_records("setup")
    text = "\n".join(f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in records)
    assert "INSERT INTO" in text  # SQL with its parameters was captured too
    assert "django.db.backends" in text
    for secret in created.plaintexts:
        assert secret not in text


def test_error_messages_hold_no_secret(created):
    for error in created.errors:
        for secret in created.plaintexts:
            assert secret not in error
