"""A client with a wrong base URL (no /v1, or /v1 twice) gets a JSON 404 in its own format that names the
right path and the base URL to set: through real gateway processes (DEBUG on and off), with both SDKs."""

import anthropic
import httpx
import openai
import pytest

from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hi"}]
# (method, path without /v1, error shape)
UNPREFIXED = [
    ("POST", "/chat/completions", "openai"),
    ("POST", "/responses", "openai"),
    ("POST", "/embeddings", "openai"),
    ("POST", "/completions", "openai"),
    ("POST", "/compare", "openai"),
    ("GET", "/models", "openai"),
    ("GET", "/models/base-a", "openai"),
    ("POST", "/messages", "anthropic"),
    ("POST", "/messages/count_tokens", "anthropic"),
]


@pytest.fixture
def key(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("base-a", [(sim, "sim-echo", 0)])
    return key_create("base-url")


def error_of(response: httpx.Response, shape: str) -> dict:
    """The error object of a JSON 404 in `shape`, after checking it is no page of HTML."""
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    assert b"<html" not in response.content.lower() and b"<!doctype" not in response.content.lower()
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "not_found_error", body
        assert response.headers["request-id"] == response.headers["x-request-id"]
    else:
        assert body["error"]["code"] == "wrong_base_url" and body["error"]["type"] == "invalid_request_error", body
    return body["error"]


def check_every_wrong_path(gateway, key) -> None:
    base = gateway.url
    for method, path, shape in UNPREFIXED:
        response = httpx.request(method, base + path, headers={"Authorization": f"Bearer {key}"}, json={})
        message = error_of(response, shape)["message"]
        right_method = "GET" if path.startswith("/models") else "POST"
        assert message.startswith(f"{method} {path} is not an endpoint of this gateway: the API is under /v1 ")
        assert f"({right_method} /v1{path})" in message, message
        if shape == "anthropic":
            assert f"set the base URL to {base} for Anthropic's SDKs" in message
            assert f"or to {base}/v1 for a client that does not" in message
        else:
            assert message.endswith(f"set the base URL to {base}/v1"), message
        # Not middleware's: the site's pages carry X-Frame-Options, the API's lean handler adds none.
        assert "x-frame-options" not in response.headers
    for method, path, shape in UNPREFIXED:
        response = httpx.request(method, f"{base}/v1/v1{path}", headers={"x-api-key": key}, json={})
        message = error_of(response, shape)["message"]
        assert f"/v1/v1{path} is not an endpoint of this gateway: the base URL ends in /v1 once too many" in message
        if shape == "anthropic":
            assert message.endswith(f"set it to {base}, Anthropic's SDKs add /v1"), message
        else:
            assert f"set it to {base}/v1, or to {base} for a client that adds /v1 itself" in message


def test_wrong_base_urls_are_json_404s_naming_the_right_one(gateway, key):
    # The session's gateway runs with DEBUG on, as the test suite does: still no debug page.
    check_every_wrong_path(gateway, key)


def test_wrong_base_urls_with_debug_off(gateway_factory, key):
    gateway = gateway_factory(DJANGO_DEBUG="False", DJANGO_SECRET_KEY="s" * 50)
    check_every_wrong_path(gateway, key)
    # Behind a proxy that terminates TLS, the hint says https (as Django's is_secure() would).
    response = httpx.post(gateway.url + "/chat/completions", headers={"X-Forwarded-Proto": "https"}, json={})
    https_url = gateway.url.replace("http://", "https://")
    assert error_of(response, "openai")["message"].endswith(f"set the base URL to {https_url}/v1")


def test_the_hint_quotes_only_an_allowed_host(gateway, key):
    port = gateway.url.rsplit(":", 1)[1]
    allowed = httpx.post(gateway.url + "/embeddings", headers={"Host": f"localhost:{port}"}, json={})
    assert error_of(allowed, "openai")["message"].endswith(f"set the base URL to http://localhost:{port}/v1")
    for host in ("evil.example.com", "127.0.0.1:1<script>", "[::1"):
        response = httpx.post(gateway.url + "/embeddings", headers={"Host": host}, json={})
        message = error_of(response, "openai")["message"]
        assert message.endswith("set the base URL to http://HOST:PORT/v1"), (host, message)
        assert "evil" not in message and "<script>" not in message


def test_site_pages_are_unaffected(gateway, key):
    playground = httpx.get(gateway.url + "/playground/")
    assert playground.status_code == 302 and playground.headers["location"] == "/login/?next=/playground/"
    admin = httpx.get(gateway.url + "/admin/")
    assert admin.status_code == 302 and admin.headers["location"].startswith("/admin/login/")
    login = httpx.get(gateway.url + "/login/")
    assert login.status_code == 200 and "text/html" in login.headers["content-type"]
    assert login.headers["x-frame-options"] == "DENY"
    # Paths that only resemble the API's are the site's: its own 404 page.
    for path in ("/chat", "/messages/batches", "/modelsx", "/models/"):
        other = httpx.get(gateway.url + path)
        assert other.status_code == 404 and "text/html" in other.headers["content-type"], path
    # The right base URL works as before.
    chat = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "base-a", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]


def test_openai_sdk_without_v1_in_its_base_url(gateway, key, fresh_simulator):
    client = openai.OpenAI(base_url=gateway.url, api_key=key, max_retries=0)
    hint = f"set the base URL to {gateway.url}/v1"
    calls = [
        ("POST /v1/chat/completions", lambda: client.chat.completions.create(model="base-a", messages=MESSAGES)),
        ("POST /v1/responses", lambda: client.responses.create(model="base-a", input="hi")),
        ("POST /v1/embeddings", lambda: client.embeddings.create(model="base-a", input="hi")),
        ("POST /v1/completions", lambda: client.completions.create(model="base-a", prompt="hi")),
        ("GET /v1/models", lambda: client.models.list()),
        ("GET /v1/models/base-a", lambda: client.models.retrieve("base-a")),
    ]
    for right, call in calls:
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert raised.value.code == "wrong_base_url"
        assert f"({right}); {hint}" in str(raised.value), str(raised.value)
    with pytest.raises(openai.NotFoundError, match="set the base URL to"):
        list(client.chat.completions.create(model="base-a", messages=MESSAGES, stream=True))
    assert fresh_simulator.requests() == []


def test_anthropic_sdk_with_v1_in_its_base_url(gateway, key, fresh_simulator):
    # The SDK adds /v1 itself, so it calls /v1/v1/messages.
    client = anthropic.Anthropic(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    hint = f"set it to {gateway.url}, Anthropic's SDKs add /v1"
    calls = [
        ("POST /v1/messages", lambda: client.messages.create(model="base-a", max_tokens=5, messages=MESSAGES)),
        ("POST /v1/messages/count_tokens", lambda: client.messages.count_tokens(model="base-a", messages=MESSAGES)),
        ("GET /v1/models", lambda: client.models.list()),
    ]
    for right, call in calls:
        with pytest.raises(anthropic.NotFoundError) as raised:
            call()
        assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "not_found_error"
        message = raised.value.body["error"]["message"]
        assert "the base URL ends in /v1 once too many" in message and f"({right}): {hint}" in message, message
        assert hint in str(raised.value)
    with (
        pytest.raises(anthropic.NotFoundError, match="once too many"),
        client.messages.stream(model="base-a", max_tokens=5, messages=MESSAGES) as stream,
    ):
        stream.until_done()
    assert fresh_simulator.requests() == []
    # The base URL the hint names works.
    fixed = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    assert fixed.messages.create(model="base-a", max_tokens=5, messages=MESSAGES).content
