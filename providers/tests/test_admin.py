"""Provider admin: every page renders, the API key is write-only, health is read-only."""

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from providers.models import Deployment, HealthCheck, Model, Provider

pytestmark = pytest.mark.django_db

UPSTREAM_KEY = "sk-upstream-admin-1f2e3d4c5b6a"
NEW_UPSTREAM_KEY = "sk-upstream-rotated-99887766"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def routing():
    provider = Provider(name="acme", base_url="https://api.example.com/v1")
    provider.api_key = UPSTREAM_KEY
    provider.save()
    model = Model.objects.create(name="gpt-x", input_price_per_million="0.5")
    deployment = Deployment.objects.create(model=model, provider=provider, upstream_model="gpt-x-2025")
    check = HealthCheck.objects.create(provider=provider, ok=False, status_code=503, latency_ms=12.5, error="boom")
    return {"provider": provider, "model": model, "deployment": deployment, "healthcheck": check}


def admin_url(name: str, *args) -> str:
    return reverse(f"admin:providers_{name}", args=args)


def provider_post_data(**overrides) -> dict:
    data = {
        "name": "acme",
        "dialect": "openai",
        "base_url": "https://api.example.com/v1",
        "enabled": "on",
        "extra_headers": "{}",
        "timeout_connect": "5",
        "timeout_read": "120",
        "max_connections": "200",
        "api_key": "",
        "deployments-TOTAL_FORMS": "0",
        "deployments-INITIAL_FORMS": "0",
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "0",
        "_save": "Save",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def assert_no_secret(html: str, provider: Provider, *secrets: str) -> None:
    for secret in (*secrets, provider.api_key_encrypted):
        if secret:
            assert secret not in html


@pytest.mark.parametrize("model_name", ["provider", "model", "deployment", "healthcheck"])
def test_changelist_and_change_pages_render(admin_client, routing, model_name):
    obj = routing[model_name]
    changelist = admin_client.get(admin_url(f"{model_name}_changelist"))
    assert changelist.status_code == 200
    assert obj in changelist.context["cl"].result_list

    change = admin_client.get(admin_url(f"{model_name}_change", obj.pk))
    assert change.status_code == 200
    history = admin_client.get(admin_url(f"{model_name}_history", obj.pk))
    assert history.status_code == 200


@pytest.mark.parametrize(("model_name", "status"), [("provider", 200), ("model", 200), ("deployment", 200)])
def test_add_pages_render(admin_client, model_name, status):
    assert admin_client.get(admin_url(f"{model_name}_add")).status_code == status


def test_site_header_names_the_gateway(admin_client):
    assert "AI Gateway" in admin_client.get(reverse("admin:index")).content.decode()


def test_provider_changelist_shows_columns_and_key_flag(admin_client, routing):
    Provider.objects.create(name="keyless", base_url="https://other.example.com/v1")
    html = admin_client.get(admin_url("provider_changelist")).content.decode()
    assert "API key set" in html
    assert "Health status" in html
    assert 'alt="True"' in html and 'alt="False"' in html
    assert "Check health now" in html
    assert_no_secret(html, routing["provider"], UPSTREAM_KEY)


def test_provider_changelist_filters_and_search(admin_client, routing):
    Provider.objects.create(name="claude-host", dialect="anthropic", base_url="https://anthropic.example.com")
    filtered = admin_client.get(admin_url("provider_changelist"), {"dialect__exact": "anthropic"})
    assert list(filtered.context["cl"].result_list) == [Provider.objects.get(name="claude-host")]
    searched = admin_client.get(admin_url("provider_changelist"), {"q": "api.example.com"})
    assert list(searched.context["cl"].result_list) == [routing["provider"]]


def test_provider_change_page_never_renders_key_or_ciphertext(admin_client, routing):
    provider = routing["provider"]
    html = admin_client.get(admin_url("provider_change", provider.pk)).content.decode()
    assert 'name="api_key"' in html
    assert 'type="password"' in html
    assert "api_key_encrypted" not in html
    assert_no_secret(html, provider, UPSTREAM_KEY)


def test_provider_add_via_post_stores_the_key_encrypted(admin_client):
    response = admin_client.post(admin_url("provider_add"), provider_post_data(name="newco", api_key=UPSTREAM_KEY))
    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(name="newco")
    assert provider.has_api_key
    assert provider.api_key == UPSTREAM_KEY
    assert UPSTREAM_KEY not in provider.api_key_encrypted


def test_provider_edit_with_blank_key_keeps_the_stored_key(admin_client, routing):
    provider = routing["provider"]
    ciphertext = provider.api_key_encrypted
    response = admin_client.post(admin_url("provider_change", provider.pk), provider_post_data(timeout_read="30"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.timeout_read == 30
    assert provider.api_key_encrypted == ciphertext
    assert provider.api_key == UPSTREAM_KEY


def test_provider_edit_with_new_key_replaces_it(admin_client, routing):
    provider = routing["provider"]
    response = admin_client.post(
        admin_url("provider_change", provider.pk), provider_post_data(api_key=NEW_UPSTREAM_KEY)
    )
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.api_key == NEW_UPSTREAM_KEY


def test_provider_clear_key_removes_it(admin_client, routing):
    provider = routing["provider"]
    response = admin_client.post(admin_url("provider_change", provider.pk), provider_post_data(clear_api_key="on"))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.api_key_encrypted == ""
    assert not provider.has_api_key


def test_provider_new_key_and_clear_together_is_rejected(admin_client, routing):
    provider = routing["provider"]
    response = admin_client.post(
        admin_url("provider_change", provider.pk), provider_post_data(api_key=NEW_UPSTREAM_KEY, clear_api_key="on")
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "not both" in html
    assert NEW_UPSTREAM_KEY not in html
    provider.refresh_from_db()
    assert provider.api_key == UPSTREAM_KEY


def test_rejected_provider_form_does_not_echo_the_typed_key(admin_client):
    response = admin_client.post(
        admin_url("provider_add"), provider_post_data(base_url="not a url", api_key=UPSTREAM_KEY)
    )
    assert response.status_code == 200
    assert "Enter a valid URL" in response.content.decode()
    assert UPSTREAM_KEY not in response.content.decode()
    assert not Provider.objects.exists()


def test_provider_history_records_the_change_without_the_key(admin_client, routing):
    provider = routing["provider"]
    admin_client.post(admin_url("provider_change", provider.pk), provider_post_data(api_key=NEW_UPSTREAM_KEY))
    provider.refresh_from_db()
    entry = LogEntry.objects.get(object_id=str(provider.pk))
    assert "API key" in entry.get_change_message()
    html = admin_client.get(admin_url("provider_history", provider.pk)).content.decode()
    assert "API key" in html
    assert_no_secret(html, provider, UPSTREAM_KEY, NEW_UPSTREAM_KEY)


def test_health_fields_are_read_only(admin_client, routing):
    provider = routing["provider"]
    admin_client.post(
        admin_url("provider_change", provider.pk),
        provider_post_data(health_status="up", health_latency_ms="1", health_consecutive_failures="9"),
    )
    provider.refresh_from_db()
    assert provider.health_status == "unknown"
    assert provider.health_latency_ms is None
    assert provider.health_consecutive_failures == 0


def test_provider_change_page_lists_its_deployments(admin_client, routing):
    html = admin_client.get(admin_url("provider_change", routing["provider"].pk)).content.decode()
    assert "deployments using this provider" in html.lower()
    assert "gpt-x-2025" in html


def test_model_changelist_shows_deployment_count(admin_client, routing):
    Deployment.objects.create(model=routing["model"], provider=routing["provider"], upstream_model="gpt-x-backup")
    response = admin_client.get(admin_url("model_changelist"))
    row = next(iter(response.context["cl"].result_list))
    assert row.deployment_count == 2
    assert 'class="field-deployment_count">2<' in response.content.decode()


def test_model_add_with_deployment_inline(admin_client, routing):
    data = {
        "name": "gpt-y",
        "enabled": "on",
        "description": "",
        "input_price_per_million": "1.25",
        "output_price_per_million": "",
        "context_window": "128000",
        "deployments-TOTAL_FORMS": "1",
        "deployments-INITIAL_FORMS": "0",
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000",
        "deployments-0-provider": str(routing["provider"].pk),
        "deployments-0-upstream_model": "gpt-y-upstream",
        "deployments-0-priority": "1",
        "deployments-0-weight": "3",
        "deployments-0-enabled": "on",
        "_save": "Save",
    }
    response = admin_client.post(admin_url("model_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    model = Model.objects.get(name="gpt-y")
    deployment = model.deployments.get()
    assert (deployment.provider, deployment.upstream_model, deployment.priority, deployment.weight) == (
        routing["provider"],
        "gpt-y-upstream",
        1,
        3,
    )


def test_deployment_changelist_filters_by_provider(admin_client, routing):
    other = Provider.objects.create(name="other", base_url="https://other.example.com/v1")
    Deployment.objects.create(model=routing["model"], provider=other, upstream_model="elsewhere")
    response = admin_client.get(admin_url("deployment_changelist"), {"provider__id__exact": other.pk})
    assert [d.upstream_model for d in response.context["cl"].result_list] == ["elsewhere"]
    searched = admin_client.get(admin_url("deployment_changelist"), {"q": "2025"})
    assert [d.upstream_model for d in searched.context["cl"].result_list] == ["gpt-x-2025"]


def test_health_checks_are_read_only(admin_client, routing):
    check = routing["healthcheck"]
    assert admin_client.get(admin_url("healthcheck_add")).status_code == 403
    html = admin_client.get(admin_url("healthcheck_change", check.pk)).content.decode()
    assert 'name="_save"' not in html
    assert "boom" in html
    response = admin_client.post(admin_url("healthcheck_change", check.pk), {"ok": "on", "error": "edited"})
    assert response.status_code == 403
    check.refresh_from_db()
    assert (check.ok, check.error) == (False, "boom")


def test_health_check_changelist_filters_by_outcome(admin_client, routing):
    HealthCheck.objects.create(provider=routing["provider"], ok=True, status_code=200)
    response = admin_client.get(admin_url("healthcheck_changelist"), {"ok__exact": "1"})
    assert [c.status_code for c in response.context["cl"].result_list] == [200]


def test_provider_form_rejects_a_bad_request_transform_naming_it(admin_client, routing):
    provider = routing["provider"]
    rules = '[{"op": "drop", "path": "user"}, {"op": "cap", "path": "max_tokens", "max": "lots"}]'
    response = admin_client.post(
        admin_url("provider_change", provider.pk), provider_post_data(request_transforms=rules)
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["request_transforms"]
    assert errors == ["transform 2: 'cap' needs a numeric 'max', not a string"]
    assert "transform 2: &#x27;cap&#x27; needs a numeric &#x27;max&#x27;" in response.content.decode()
    provider.refresh_from_db()
    assert provider.request_transforms == []


def test_provider_form_refuses_to_override_the_upstream_credentials(admin_client):
    rules = '[{"op": "header", "name": "Authorization", "value": "Bearer other"}]'
    response = admin_client.post(admin_url("provider_add"), provider_post_data(request_transforms=rules))
    assert response.status_code == 200
    assert "header &#x27;Authorization&#x27; is set by the gateway" in response.content.decode()
    assert not Provider.objects.exists()


def test_provider_form_saves_good_request_transforms(admin_client, routing):
    provider = routing["provider"]
    rules = [
        {"op": "cap", "path": "max_tokens", "max": 8192},
        {"op": "header", "name": "HTTP-Referer", "value": "https://app.example.com"},
    ]
    page = admin_client.get(admin_url("provider_change", provider.pk)).content.decode()
    assert 'name="request_transforms"' in page
    assert "HTTP-Referer" in page  # the help text's example

    response = admin_client.post(
        admin_url("provider_change", provider.pk), provider_post_data(request_transforms=json.dumps(rules))
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    provider.refresh_from_db()
    assert provider.request_transforms == rules

    cleared = admin_client.post(admin_url("provider_change", provider.pk), provider_post_data(request_transforms=""))
    assert cleared.status_code == 302
    provider.refresh_from_db()
    assert provider.request_transforms == []


def test_model_unsupported_tools_is_set_from_admin(admin_client, routing):
    page = admin_client.get(admin_url("model_add")).content.decode()
    assert 'name="unsupported_tools"' in page and 'value="refuse"' in page
    data = {
        "name": "strict-tools",
        "enabled": "on",
        "unsupported_tools": "refuse",
        "deployments-TOTAL_FORMS": "0",
        "deployments-INITIAL_FORMS": "0",
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    response = admin_client.post(admin_url("model_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Model.objects.get(name="strict-tools").unsupported_tools == "refuse"
    # A form posted without the field (an older page, a script) gets the default.
    response = admin_client.post(admin_url("model_add"), {**data, "name": "default-tools", "unsupported_tools": ""})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Model.objects.get(name="default-tools").unsupported_tools == "drop"
