"""Changes made in Django admin reach every gateway process within seconds."""

import openai
import pytest

from accounts.models import ApiKey
from providers.models import Provider
from tests.support.data import key_create, model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "admin"}]


def test_admin_disables_key_and_provider_on_two_processes(gateway_factory, fresh_simulator, admin_client):
    first_gw, second_gw = gateway_factory(), gateway_factory()
    first = provider_create("first", fresh_simulator.openai_base)
    second = provider_create("second", fresh_simulator.openai_base)
    model_create("sim-two", [(first, "sim-echo", 0), (second, "sim-echo", 1)])
    key = key_create("free")
    clients = [openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) for gw in (first_gw, second_gw)]

    def provider_used(client):
        return client.chat.completions.with_raw_response.create(model="sim-two", messages=MESSAGES).headers[
            "x-gateway-provider"
        ]

    assert [provider_used(c) for c in clients] == ["first", "first"]

    # The provider's change form, saved with "enabled" unticked, as an operator would.
    deployment = first.deployments.get()
    form = {
        "name": "first",
        "dialect": "openai",
        "base_url": first.base_url,
        "extra_headers": "{}",
        "timeout_connect": "5",
        "timeout_read": "120",
        "max_connections": "200",
        "deployments-TOTAL_FORMS": "1",
        "deployments-INITIAL_FORMS": "1",
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000",
        "deployments-0-id": str(deployment.pk),
        "deployments-0-provider": str(first.pk),
    }
    response = admin_client.post(f"/admin/providers/provider/{first.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(pk=first.pk)
    assert not provider.enabled and provider.api_key == "sk-upstream-test"
    for client in clients:
        eventually(lambda c=client: provider_used(c) == "second", timeout=5, what="provider disabled")

    api_key = ApiKey.objects.get()
    response = admin_client.post(
        "/admin/accounts/apikey/", {"action": "disable_keys", "_selected_action": [api_key.pk]}, follow=True
    )
    assert response.status_code == 200
    assert not ApiKey.objects.get().enabled

    def refused(client) -> bool:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        return False

    for client in clients:
        eventually(lambda c=client: refused(c), timeout=5, what="key disabled")
