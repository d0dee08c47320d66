"""Routing data for end-to-end tests, written through the ORM (tests use transaction=True so the
gateway process sees it)."""

from accounts.models import Tier
from accounts.services import api_key_issue, service_user_get_or_create
from providers.models import Deployment, Model, Provider


def provider_create(
    name: str, base_url: str, *, dialect: str = "openai", api_key: str = "sk-upstream-test", **fields
) -> Provider:
    provider = Provider(name=name, dialect=dialect, base_url=base_url, **fields)
    provider.api_key = api_key
    provider.save()
    return provider


def model_create(name: str, deployments: list[tuple[Provider, str, int]], **fields) -> Model:
    """deployments: (provider, upstream_model, priority)."""
    model = Model.objects.create(name=name, **fields)
    for provider, upstream_model, priority in deployments:
        Deployment.objects.create(model=model, provider=provider, upstream_model=upstream_model, priority=priority)
    return model


def key_create(tier_name: str = "test", *, models: list[Model] | None = None, user=None, **limits) -> str:
    tier, _ = Tier.objects.update_or_create(name=tier_name, defaults=limits)
    if models:
        tier.allowed_models.set(models)
    issued = api_key_issue(owner=user or service_user_get_or_create(), tier=tier, name=f"{tier_name}-key")
    return issued.plaintext


def provider_admin_form(api_key: str, **fields) -> dict:
    """The POST body of admin's add-provider page: a valid provider with no deployments."""
    return {
        "name": "via-admin",
        "dialect": "openai",
        "base_url": "https://admin.example.com/v1",
        "enabled": "on",
        "extra_headers": "{}",
        "timeout_connect": "5",
        "timeout_read": "120",
        "max_connections": "200",
        "request_transforms": "[]",
        "api_key": api_key,
        "deployments-TOTAL_FORMS": "0",
        "deployments-INITIAL_FORMS": "0",
        "_save": "Save",
        **fields,
    }
