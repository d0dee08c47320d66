"""GET /health: liveness for anyone, provider health for staff keys."""

import httpx
import pytest
from django.contrib.auth import get_user_model

from tests.support.data import key_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_liveness_without_key(gateway):
    response = httpx.get(gateway.url + "/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_provider_summary_only_for_staff(gateway, fresh_simulator):
    provider_create("sim", fresh_simulator.openai_base)
    staff = get_user_model().objects.create_user("ops", is_staff=True)
    staff_key = key_create("ops", user=staff)
    plain_key = key_create("free", user=get_user_model().objects.create_user("someone"))
    summary = httpx.get(gateway.url + "/health", headers={"Authorization": f"Bearer {staff_key}"}).json()
    assert summary["status"] == "ok"
    assert [p["name"] for p in summary["providers"]] == ["sim"]
    assert summary["providers"][0]["status"] == "unknown"
    assert "sk-upstream-test" not in str(summary)
    plain = httpx.get(gateway.url + "/health", headers={"Authorization": f"Bearer {plain_key}"}).json()
    assert plain == {"status": "ok"}
