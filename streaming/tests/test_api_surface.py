"""Every /v1/ response is the API's: JSON 404/405 in the path family's dialect, request ids, model lookups
with both official SDKs."""

import anthropic
import httpx
import openai
import pytest

from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    allowed = model_create("surface-a", [(sim, "sim-echo", 0)])
    model_create("surface-hidden", [(sim, "sim-echo", 0)])
    return key_create("surface", models=[allowed])


def test_unknown_paths_are_json_404_in_the_path_familys_dialect(gateway, key):
    response = httpx.post(gateway.url + "/v1/embeddingz", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == "no such endpoint: POST /v1/embeddingz"
    assert response.headers["x-request-id"].startswith("req_")
    response = httpx.get(gateway.url + "/v1/messages/batches", headers={"x-api-key": key})
    assert response.status_code == 404
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert response.headers["request-id"] == response.headers["x-request-id"]
    # The SDKs show the message, not a page of HTML.
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="no such endpoint"):
        client.files.list()


def test_wrong_methods_are_405_with_allow(gateway, key):
    for method, path, allow in (
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/messages", "POST"),
        ("DELETE", "/v1/compare", "POST"),
        ("POST", "/v1/models", "GET"),
    ):
        response = httpx.request(method, gateway.url + path, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allow
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"].startswith("req_")


def test_models_with_both_sdks(gateway, key):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["surface-a"]
    assert client.models.retrieve("surface-a").id == "surface-a"
    for missing in ("surface-hidden", "no-such"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(missing)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    page = claude.models.list()
    assert [m.id for m in page.data] == ["surface-a"] and page.has_more is False
    assert page.first_id == page.last_id == "surface-a"
    info = claude.models.retrieve("surface-a")
    assert info.type == "model" and info.display_name == "surface-a" and info.created_at.year >= 2024
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("surface-hidden")


def test_every_response_carries_a_request_id(gateway, key):
    chat = {"model": "surface-a", "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(gateway.url + "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})
    refused = httpx.post(gateway.url + "/v1/chat/completions", json=chat)
    messages = httpx.post(
        gateway.url + "/v1/messages", json={**chat, "max_tokens": 5}, headers={"x-api-key": key}, timeout=10
    )
    assert (ok.status_code, refused.status_code, messages.status_code) == (200, 401, 200)
    ids = {r.headers["x-request-id"] for r in (ok, refused, messages)}
    assert len(ids) == 3 and all(i.startswith("req_") for i in ids)
    assert messages.headers["request-id"] == messages.headers["x-request-id"]
    assert "request-id" not in ok.headers


@pytest.mark.parametrize("debug", ["True", "False"])
def test_api_errors_are_json_with_debug_on_and_off(gateway_factory, key, debug):
    gateway = gateway_factory(DJANGO_DEBUG=debug, DJANGO_SECRET_KEY="s" * 50)
    auth = {"Authorization": f"Bearer {key}"}
    unknown = httpx.get(gateway.url + "/v1/foo", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "no such endpoint: GET /v1/foo"
    wrong = httpx.get(gateway.url + "/v1/chat/completions", headers=auth)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    anthropic_path = httpx.post(gateway.url + "/v1/messages/unknown", headers={"x-api-key": key}, json={})
    assert anthropic_path.status_code == 404
    assert anthropic_path.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such endpoint: POST /v1/messages/unknown"},
    }
    for response in (unknown, wrong, anthropic_path):
        assert response.headers["content-type"] == "application/json"
        assert b"<html" not in response.content.lower()


NEW_ENDPOINTS = [
    ("/v1/compare", "openai"),
    ("/v1/embeddings", "openai"),
    ("/v1/completions", "openai"),
    ("/v1/responses", "openai"),
    ("/v1/messages/count_tokens", "anthropic"),
]
GARBAGE = [
    (b"\xff\x00\x13garbage", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b'{"model": 5, "models": 5, "input": 5, "prompt": 5, "messages": 5}', "must be"),
]


@pytest.mark.parametrize(("path", "dialect"), NEW_ENDPOINTS)
def test_garbage_bodies_are_json_400s_in_the_clients_dialect(gateway, key, path, dialect):
    headers = {"x-api-key": key, "content-type": "application/json"}
    for raw, needle in GARBAGE:
        response = httpx.post(gateway.url + path, content=raw, headers=headers, timeout=10)
        assert response.status_code == 400, (path, raw, response.text)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        error = body["error"]
        if dialect == "anthropic":
            assert body["type"] == "error" and error["type"] == "invalid_request_error"
        else:
            assert "type" in error and "code" in error
        assert needle in error["message"], (path, raw, error)
        assert "Traceback" not in response.text
