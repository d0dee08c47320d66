"""No plaintext secret anywhere it could leak: our API keys and providers' keys never appear in a log
line (test process, gateway at DEBUG, Celery worker), an admin page, a response (bodies and headers,
errors included) or any column of any table, after traffic through a real gateway process."""

import logging
import re
from io import StringIO

import httpx
import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from accounts.models import ApiKey, Tier, UsageRecord
from accounts.services import api_key_issue
from providers.models import Model, Provider
from tests.support.data import key_create, model_create, provider_admin_form, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

UPSTREAM_KEY = "sk-upstream-real-SECRET-4f3e2d1c0b"
UPSTREAM_WRONG = "sk-upstream-wrong-SECRET-9a8b7c6d5e"
UPSTREAM_ADMIN = "sk-upstream-admin-SECRET-1122334455"
PASSWORD = "pw-secrets-audit-7788"
KEY_RE = re.compile(r"sk-gw-[A-Za-z0-9_-]{43}")


@pytest.fixture
def sql_logged():
    db = connections["default"]
    previous = db.force_debug_cursor
    db.force_debug_cursor = True
    yield
    db.force_debug_cursor = previous


def database_dump() -> str:
    """Every column of every row of every model (many-to-many tables too), and decoded sessions."""
    parts = []
    for model in apps.get_models(include_auto_created=True):
        columns = [field.attname for field in model._meta.concrete_fields]
        for row in model._default_manager.all().values_list(*columns):
            parts.append(f"{model._meta.label}: {row!r}")
    parts.extend(repr(session.get_decoded()) for session in Session.objects.all())
    return "\n".join(parts)


def admin_pages(client: Client) -> dict[str, str]:
    """Every admin changelist, and the change page of every row (up to 25 per model)."""
    pages = {}
    for model in admin.site._registry:
        opts = model._meta
        try:
            changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        except NoReverseMatch:
            continue
        pages[changelist] = ""
        for pk in model._default_manager.values_list("pk", flat=True)[:25]:
            pages[reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk])] = ""
            pages[reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[pk])] = ""
    pages["/admin/"] = pages["/admin/dashboard/"] = pages["/playground/"] = ""
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        pages[url] = response.content.decode()
    return pages


def test_no_secret_in_logs_pages_responses_or_database(
    gateway_factory, simulator_factory, celery_worker, caplog, sql_logged
):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    sim = simulator_factory(api_key=UPSTREAM_KEY)
    good = provider_create("good", sim.openai_base, api_key=UPSTREAM_KEY)
    claude = provider_create("claude", sim.anthropic_base, dialect="anthropic", api_key=UPSTREAM_KEY)
    wrong = provider_create("wrong", sim.openai_base, api_key=UPSTREAM_WRONG)
    model_create("sec-fast", [(good, "sim-echo", 0)])
    model_create("sec-claude", [(claude, "sim-claude", 0)])
    model_create("sec-wrong-key", [(wrong, "sim-echo", 0)])
    model_create("sec-failing", [(good, "sim-echo?fail=500", 0)])
    model_create("sec-drop", [(good, "sim-echo?tokens=20&drop_after=3", 0)])
    model_create("sec-forbidden", [(good, "sim-echo", 0)])

    staff = get_user_model().objects.create_superuser("ops", password=PASSWORD)
    key = key_create("secrets", models=list(Model.objects.exclude(name="sec-forbidden")))
    expired = api_key_issue(
        owner=staff, tier=Tier.objects.get(name="secrets"), name="expired", expires_at=timezone.now()
    ).plaintext
    out = StringIO()
    call_command("issue_key", "--tier", "secrets", "--name", "cli", stdout=out)
    cli_key = out.getvalue().strip().splitlines()[-1]
    out = StringIO()
    call_command("rotate_key", KEY_RE.findall(cli_key)[0][:12], "--grace-hours", "1", stdout=out)
    rotated_key = out.getvalue().strip().splitlines()[-1]
    revoked = key_create("revoked-tier")
    call_command("revoke_key", ApiKey.objects.get(tier__name="revoked-tier").prefix, stdout=StringIO())

    admin_client = Client()
    admin_client.force_login(staff)
    provider_form = provider_admin_form(UPSTREAM_ADMIN)
    bounced = admin_client.post(
        reverse("admin:providers_provider_add"), {**provider_form, "base_url": "http://169.254.169.254/"}
    )
    assert bounced.status_code == 200
    assert admin_client.post(reverse("admin:providers_provider_add"), provider_form).status_code == 302
    issued_page = admin_client.post(
        reverse("admin:accounts_apikey_add"),
        {"name": "via-admin", "owner": staff.pk, "tier": Tier.objects.get(name="secrets").pk, "enabled": "on"},
        follow=True,
    )
    admin_key = KEY_RE.findall(issued_page.content.decode())[0]

    gateway = gateway_factory(DJANGO_LOG_LEVEL="DEBUG")
    worker = celery_worker(beat=True, loglevel="debug", extra_env={"GATEWAY_HEALTH_CHECK_SECONDS": "1"})
    responses: list[httpx.Response] = []
    chat = {"messages": [{"role": "user", "content": "secrets"}]}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:

        def send(method: str, path: str, key: str | None, *, header: str = "authorization", **kwargs):
            headers = {}
            if key is not None:
                headers[header] = f"Bearer {key}" if header == "authorization" else key
            response = client.request(method, path, headers=headers, **kwargs)
            responses.append(response)
            return response

        for good_key in (key, rotated_key, admin_key):
            assert send("POST", "/v1/chat/completions", good_key, json={**chat, "model": "sec-fast"}).status_code == 200
        assert send("POST", "/v1/chat/completions", key, json={**chat, "model": "sec-fast", "stream": True}).is_success
        anthropic = {"model": "sec-claude", "max_tokens": 50, **chat}
        assert send("POST", "/v1/messages", key, header="x-api-key", json=anthropic).status_code == 200
        expected_errors = [
            (send("POST", "/v1/chat/completions", key, json={**chat, "model": "sec-wrong-key"}), 502),
            (send("POST", "/v1/chat/completions", key, json={**chat, "model": "sec-failing"}), 502),
            (send("POST", "/v1/chat/completions", key, json={**chat, "model": "sec-forbidden"}), 403),
            (send("POST", "/v1/chat/completions", key, json={**chat, "model": "sec-nope"}), 404),
            (send("POST", "/v1/chat/completions", key, content=b"{broken"), 400),
            (send("POST", "/v1/chat/completions", expired, json={**chat, "model": "sec-fast"}), 401),
            (send("POST", "/v1/chat/completions", revoked, json={**chat, "model": "sec-fast"}), 401),
            (send("POST", "/v1/chat/completions", key[:-4] + "AAAA", json={**chat, "model": "sec-fast"}), 401),
            (send("POST", "/v1/messages", revoked, header="x-api-key", json=anthropic), 401),
            (send("GET", "/v1/models", None), 401),
            (send("GET", "/api/v1/usage", revoked), 401),
        ]
        assert [r.status_code for r, _ in expected_errors] == [status for _, status in expected_errors]
        dropped = send("POST", "/v1/chat/completions", key, json={**chat, "model": "sec-drop", "stream": True})
        assert dropped.status_code == 200
        assert send("GET", "/api/v1/usage", key).status_code == 200

    eventually(lambda: UsageRecord.objects.count() >= 6, timeout=15, what="usage flushed")
    eventually(
        lambda: Provider.objects.get(name="wrong").health_checked_at is not None, timeout=15, what="health checked"
    )
    worker.stop()

    secrets = [UPSTREAM_KEY, UPSTREAM_WRONG, UPSTREAM_ADMIN, key, cli_key, rotated_key, admin_key, expired, revoked]
    places: dict[str, str] = {
        "database": database_dump(),
        "gateway log": gateway.log(),
        "worker log": worker.log(),
        "test process log": "\n".join(
            f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.get_records("call")
        ),
        "bounced admin form": bounced.content.decode(),
    }
    for number, response in enumerate(responses):
        places[f"response {number} {response.request.url.path}"] = (
            f"{response.status_code} {dict(response.headers)!r}\n{response.text}"
        )
    for url, html in admin_pages(admin_client).items():
        places[f"admin page {url}"] = html

    # The setup really exercised what it claims: SQL with parameters and DEBUG records were captured,
    # the upstream saw the real key, and the admin page showed the new key (the one allowed place).
    assert "django.db.backends" in places["test process log"]
    assert "DEBUG" in places["gateway log"]
    assert len(sim.requests()) >= 5
    assert admin_key in issued_page.content.decode()
    assert "ApiKey" in places["database"] or "accounts.ApiKey" in places["database"]

    leaks = [(where, secret[:12]) for where, text in places.items() for secret in secrets if secret and secret in text]
    assert leaks == []
