"""Provider, Model, Deployment and HealthCheck: names, secret encryption at rest, constraints."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from aigateway.config_version import CONFIG_VERSION_KEY
from aigateway.redis import redis_sync
from providers.models import Deployment, HealthCheck, Model, Provider

pytestmark = pytest.mark.django_db

UPSTREAM_KEY = "sk-upstream-0123456789abcdef"


def provider_make(name="acme", **fields) -> Provider:
    return Provider.objects.create(name=name, base_url="https://api.example.com/v1", **fields)


def test_str_of_each_model():
    provider = provider_make()
    model = Model.objects.create(name="gpt-x")
    deployment = Deployment.objects.create(model=model, provider=provider, upstream_model="gpt-x-2025")
    check = HealthCheck.objects.create(provider=provider, ok=False, status_code=503)

    assert str(provider) == "acme"
    assert str(model) == "gpt-x"
    assert str(deployment) == "gpt-x -> acme/gpt-x-2025"
    assert str(check).startswith("acme fail @ ")


def test_api_key_round_trips_through_the_database_encrypted():
    provider = Provider(name="acme", base_url="https://api.example.com/v1")
    provider.api_key = UPSTREAM_KEY
    provider.save()

    stored = Provider.objects.get(pk=provider.pk)
    assert stored.api_key == UPSTREAM_KEY
    assert stored.api_key_encrypted
    assert stored.api_key_encrypted != UPSTREAM_KEY
    assert UPSTREAM_KEY not in stored.api_key_encrypted
    raw = Provider.objects.filter(pk=provider.pk).values_list("api_key_encrypted", flat=True).get()
    assert UPSTREAM_KEY not in raw


def test_encrypting_the_same_key_twice_gives_different_ciphertexts():
    first, second = Provider(name="a"), Provider(name="b")
    first.api_key = UPSTREAM_KEY
    second.api_key = UPSTREAM_KEY
    assert first.api_key_encrypted != second.api_key_encrypted
    assert first.api_key == second.api_key == UPSTREAM_KEY


def test_has_api_key_follows_setting_and_clearing():
    provider = provider_make()
    assert provider.has_api_key is False
    assert provider.api_key == ""

    provider.api_key = UPSTREAM_KEY
    assert provider.has_api_key is True

    provider.api_key = ""
    assert provider.has_api_key is False
    assert provider.api_key_encrypted == ""


def test_ciphertext_from_another_secret_key_decrypts_to_nothing(settings):
    provider = Provider(name="acme")
    provider.api_key = UPSTREAM_KEY
    settings.PROVIDER_SECRET_KEY = "a-different-key-material"
    assert provider.api_key == ""


def test_provider_and_model_names_are_unique():
    provider_make(name="acme")
    with pytest.raises(IntegrityError), transaction.atomic():
        provider_make(name="acme")
    Model.objects.create(name="gpt-x")
    with pytest.raises(IntegrityError), transaction.atomic():
        Model.objects.create(name="gpt-x")


def test_one_deployment_per_model_provider_and_upstream_model():
    provider = provider_make()
    model = Model.objects.create(name="gpt-x")
    Deployment.objects.create(model=model, provider=provider, upstream_model="up-1")
    Deployment.objects.create(model=model, provider=provider, upstream_model="up-2")
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(model=model, provider=provider, upstream_model="up-1")
    assert model.deployments.count() == 2


def test_deleting_a_provider_deletes_its_deployments_and_health_history():
    provider = provider_make()
    model = Model.objects.create(name="gpt-x")
    Deployment.objects.create(model=model, provider=provider, upstream_model="up-1")
    HealthCheck.objects.create(provider=provider, ok=True)
    provider.delete()
    assert Deployment.objects.count() == 0
    assert HealthCheck.objects.count() == 0
    assert Model.objects.filter(name="gpt-x").exists()


def test_field_validation_rejects_bad_url_and_timeouts():
    provider = Provider(name="acme", base_url="not a url", timeout_connect=0, max_connections=0)
    with pytest.raises(ValidationError) as excinfo:
        provider.full_clean()
    assert set(excinfo.value.message_dict) >= {"base_url", "timeout_connect", "max_connections"}


def test_saving_routing_data_bumps_the_config_version(django_capture_on_commit_callbacks):
    before = redis_sync().get(CONFIG_VERSION_KEY)
    with django_capture_on_commit_callbacks(execute=True):
        provider_make()
    assert redis_sync().get(CONFIG_VERSION_KEY) not in (None, before)
