"""Health checks steer traffic: a provider failing its probes gets no requests until it recovers."""

import time

import openai
import pytest

from providers.models import HealthStatus, Provider
from tests.support.data import key_create, model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "health"}]


def wait_status(name: str, status: str, timeout: float) -> float:
    def reached():
        return Provider.objects.get(name=name).health_status == status

    return eventually(reached, timeout=timeout, what=f"{name} {status}")


def test_down_provider_gets_no_traffic_until_it_recovers(gateway, simulator_factory, celery_worker):
    primary_sim, backup_sim = simulator_factory(), simulator_factory()
    primary = provider_create("primary", primary_sim.openai_base)
    backup = provider_create("backup", backup_sim.openai_base)
    model_create("sim-ha", [(primary, "sim-echo", 0), (backup, "sim-echo", 1)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    celery_worker(beat=True, extra_env={"GATEWAY_HEALTH_CHECK_SECONDS": "1"})

    wait_status("primary", HealthStatus.UP, timeout=10)
    client.chat.completions.create(model="sim-ha", messages=MESSAGES)
    assert len(primary_sim.requests(path="/v1/chat/completions")) == 1

    primary_sim.configure(fail=500)
    took = wait_status("primary", HealthStatus.DOWN, timeout=5)
    assert took < 2.5  # within about one interval
    time.sleep(0.6)  # the gateway's availability cache
    before = len(primary_sim.requests(path="/v1/chat/completions"))
    for _ in range(5):
        response = client.chat.completions.with_raw_response.create(model="sim-ha", messages=MESSAGES)
        assert response.headers["x-gateway-provider"] == "backup"
    assert len(primary_sim.requests(path="/v1/chat/completions")) == before

    primary_sim.clear_config()
    wait_status("primary", HealthStatus.UP, timeout=5)
    time.sleep(0.6)
    response = client.chat.completions.with_raw_response.create(model="sim-ha", messages=MESSAGES)
    assert response.headers["x-gateway-provider"] == "primary"


def test_disabling_a_deployment_takes_effect_within_seconds(gateway, fresh_simulator):
    first = provider_create("first", fresh_simulator.openai_base)
    second = provider_create("second", fresh_simulator.openai_base)
    model = model_create("sim-two", [(first, "sim-echo", 0), (second, "sim-echo", 1)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)

    def provider_used() -> str:
        response = client.chat.completions.with_raw_response.create(model="sim-two", messages=MESSAGES)
        return response.headers["x-gateway-provider"]

    def model_gone() -> bool:
        try:
            client.chat.completions.create(model="sim-two", messages=MESSAGES)
        except openai.NotFoundError:
            return True
        return False

    assert provider_used() == "first"
    deployment = model.deployments.get(provider=first)
    deployment.enabled = False
    deployment.save()
    eventually(lambda: provider_used() == "second", timeout=5, what="deployment disabled")
    model.enabled = False
    model.save()
    eventually(model_gone, timeout=5, what="model disabled")
