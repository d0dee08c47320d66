"""Routing refusals name the model the client asked for, also when a header rule is configured (the
route table then reads the rule's headers from the request before deciding)."""

import httpx
import pytest

from providers.models import RouteRule
from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hi"}]


def test_unknown_and_forbidden_models_are_named_with_a_header_rule(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    allowed = model_create("allowed", [(sim, "sim-echo", 0)])
    model_create("forbidden", [(sim, "sim-echo", 0)])
    background = model_create("background-model", [(sim, "sim-mini", 0)])
    RouteRule.objects.create(name="bg", when={"header": {"x-gateway-route": "background"}}, target=background)
    key = key_create("narrow", models=[allowed, background])
    headers = {"Authorization": f"Bearer {key}", "x-gateway-route": "foreground"}

    def chat(model: str) -> httpx.Response:
        body = {"model": model, "messages": MESSAGES}
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)

    ok = chat("allowed")
    assert ok.status_code == 200, ok.text
    unknown = chat("no-such-model")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "the model 'no-such-model' does not exist"
    forbidden = chat("forbidden")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["message"] == "this key's tier does not allow the model 'forbidden'"
    for refused in (unknown, forbidden):
        assert "x-gateway-route" not in refused.json()["error"]["message"]
    anthropic_unknown = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "no-such-model", "max_tokens": 5, "messages": MESSAGES},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01", "x-gateway-route": "foreground"},
        timeout=30,
    )
    assert anthropic_unknown.status_code == 404
    assert anthropic_unknown.json()["error"]["message"] == "the model 'no-such-model' does not exist"
