"""model_names_down: the models whose every provider is marked down (or disabled), which the playground leaves out
of its default selection."""

import pytest

from providers.availability import model_names_down
from providers.models import HealthStatus, Provider
from tests.support.data import model_create, provider_create

pytestmark = pytest.mark.django_db


def test_a_model_is_down_only_when_every_provider_serving_it_is():
    up = provider_create("up", "http://127.0.0.1:9/v1")
    down = provider_create("down", "http://127.0.0.1:9/v1")
    off = provider_create("off", "http://127.0.0.1:9/v1", enabled=False)
    Provider.objects.filter(pk=down.pk).update(health_status=HealthStatus.DOWN)
    Provider.objects.filter(pk=up.pk).update(health_status=HealthStatus.UP)
    model_create("only-down", [(down, "m", 0)])
    model_create("down-and-off", [(down, "m", 0), (off, "m", 1)])
    model_create("down-then-up", [(down, "m", 0), (up, "m", 1)])
    model_create("unchecked", [(provider_create("unknown", "http://127.0.0.1:9/v1"), "m", 0)])
    model_create("no-deployment", [])
    assert model_names_down() == {"only-down", "down-and-off"}
