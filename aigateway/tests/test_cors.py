"""CORS on the API paths: off by default; for listed origins, preflights answered and responses readable."""

import httpx
import pytest

from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

APP = "http://app.example"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, anthropic-version",
}


@pytest.fixture
def key(fresh_simulator):
    model_create("cors-model", [(provider_create("sim", fresh_simulator.openai_base), "sim-echo", 0)])
    return key_create("cors")


def test_off_by_default(gateway, key):
    response = httpx.options(gateway.url + "/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in response.headers
    chat = httpx.get(gateway.url + "/v1/models", headers={"Origin": APP, "Authorization": f"Bearer {key}"})
    assert chat.status_code == 200 and "access-control-allow-origin" not in chat.headers


def test_listed_origins(gateway_factory, key):
    gateway = gateway_factory(GATEWAY_CORS_ORIGINS=f"{APP},http://other.example")
    preflight = httpx.options(gateway.url + "/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == PREFLIGHT["Access-Control-Request-Headers"]
    body = {"model": "cors-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Origin": APP, "Authorization": f"Bearer {key}"}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as streamed:
        assert streamed.headers["access-control-allow-origin"] == APP
        assert "x-request-id" in streamed.headers["access-control-expose-headers"]
        assert b"[DONE]" in streamed.read()
    refused = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"Origin": APP})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP
    stranger = httpx.options(
        gateway.url + "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers
