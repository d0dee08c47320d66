"""Request transforms end to end: official SDKs -> gateway process -> simulator, asserting on the body
and headers the provider received, passed through or translated, against a provider without rules."""

import hashlib
import re

import anthropic
import openai
import pytest

from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me something about streams"}]
UPSTREAM_KEY = "sk-upstream-test"
ORG_TOKEN = "org-token-5f4e3d2c1b"
RULES = [
    {"op": "drop", "path": "metadata.user_id"},
    {"op": "drop", "path": "user"},
    {"op": "default", "path": "temperature", "value": 0.7},
    {"op": "force", "path": "top_p", "value": 1},
    {"op": "force", "path": "provider.sort", "value": "throughput"},
    {"op": "cap", "path": "max_tokens", "max": 100},
    {"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"},
    {"op": "header", "name": "HTTP-Referer", "value": "https://app.example.com"},
    {"op": "header", "name": "X-Org-Token", "value": ORG_TOKEN},
]
# What the OpenAI SDK sends for `openai_fields()`, and so what a provider without rules receives.
SENT = {
    "messages": MESSAGES,
    "max_tokens": 5000,
    "top_p": 0.5,
    "metadata": {"user_id": "u-1", "team": "blue"},
    "provider": {"order": ["fast-host"]},
}


@pytest.fixture
def key(fresh_simulator):
    shaped = provider_create("shaped", fresh_simulator.openai_base, request_transforms=RULES)
    plain = provider_create("plain", fresh_simulator.openai_base)
    model_create("shaped-echo", [(shaped, "sim-echo", 0)])
    model_create("plain-echo", [(plain, "sim-echo", 0)])
    return key_create("free")


def openai_fields() -> dict:
    return {
        "messages": SENT["messages"],
        "max_tokens": SENT["max_tokens"],
        "top_p": SENT["top_p"],
        "metadata": SENT["metadata"],
        "extra_body": {"provider": SENT["provider"]},
    }


def last_request(simulator) -> dict:
    records = simulator.requests(path="/v1/chat/completions")
    assert records, "the simulator received no chat request"
    return records[-1]


def assert_shaped(received: dict) -> None:
    headers = received["headers"]
    assert headers["http-referer"] == "https://app.example.com"
    assert headers["x-org-token"] == ORG_TOKEN
    # The provider's own credentials still go out untouched.
    assert received["auth_sha256"] == hashlib.sha256(UPSTREAM_KEY.encode()).hexdigest()


def test_openai_pass_through_body_is_transformed(gateway, key, fresh_simulator):
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    completion = client.chat.completions.create(model="shaped-echo", **openai_fields())
    assert completion.choices[0].message.content
    assert completion.model == "shaped-echo"

    received = last_request(fresh_simulator)
    assert received["body"] == {
        "model": "sim-echo",
        "messages": MESSAGES,
        "metadata": {"team": "blue"},
        "temperature": 0.7,
        "top_p": 1,
        "provider": {"order": ["fast-host"], "sort": "throughput"},
        "max_completion_tokens": 100,
    }
    assert_shaped(received)


def test_openai_stream_is_transformed_and_still_streams(gateway, key, fresh_simulator):
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    fields = {**openai_fields(), "temperature": 0.2}
    shaped = client.chat.completions.create(model="shaped-echo", stream=True, **fields)
    shaped_text = "".join(c.choices[0].delta.content or "" for c in shaped if c.choices)
    received = last_request(fresh_simulator)
    plain = client.chat.completions.create(model="plain-echo", stream=True, **fields)
    plain_text = "".join(c.choices[0].delta.content or "" for c in plain if c.choices)

    assert shaped_text and shaped_text == plain_text
    body = received["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2  # a default never replaces what the client sent
    assert (body["top_p"], body["max_completion_tokens"], body["metadata"]) == (1, 100, {"team": "blue"})
    assert "max_tokens" not in body
    assert_shaped(received)


def test_a_provider_without_rules_receives_the_body_unchanged(gateway, key, fresh_simulator):
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    client.chat.completions.create(model="plain-echo", **openai_fields())
    received = last_request(fresh_simulator)
    assert received["body"] == {**SENT, "model": "sim-echo"}
    assert "http-referer" not in received["headers"]
    assert "x-org-token" not in received["headers"]


def test_anthropic_client_translated_to_an_openai_provider_is_transformed(gateway, key, fresh_simulator):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    fields = {"max_tokens": 4096, "messages": MESSAGES, "metadata": {"user_id": "claude-user-1"}}

    message = client.messages.create(model="shaped-echo", **fields)
    assert message.content[0].text
    shaped = last_request(fresh_simulator)
    client.messages.create(model="plain-echo", **fields)
    plain = last_request(fresh_simulator)

    # Without rules the translation carries the user and max_tokens; the rules reshape exactly that.
    assert "user" in plain["body"] and plain["body"]["max_tokens"] == 4096
    assert "temperature" not in plain["body"]
    expected = {k: v for k, v in plain["body"].items() if k not in ("user", "max_tokens")}
    assert shaped["body"] == {
        **expected,
        "temperature": 0.7,
        "top_p": 1,
        "provider": {"sort": "throughput"},
        "max_completion_tokens": 100,
    }
    assert_shaped(shaped)
    assert "http-referer" not in plain["headers"]


def test_applied_transforms_are_logged_without_header_values(gateway_factory, key, fresh_simulator):
    gw = gateway_factory(DJANGO_LOG_LEVEL="DEBUG")
    client = openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)
    response = client.chat.completions.with_raw_response.create(model="shaped-echo", **openai_fields())
    request_id = response.headers["x-request-id"]
    assert last_request(fresh_simulator)["headers"]["x-org-token"] == ORG_TOKEN

    lines = [line for line in gw.log().splitlines() if "transforms:" in line]
    assert len(lines) == 1, lines
    assert re.search(
        rf"request {request_id}: provider shaped transforms: drop metadata.user_id, drop user, default temperature, "
        r"force top_p, force provider.sort, cap max_tokens at 100, rename max_tokens to max_completion_tokens, "
        r"header HTTP-Referer, header X-Org-Token$",
        lines[0],
    )
    assert ORG_TOKEN not in gw.log()


def test_drop_temperature_cap_max_tokens_add_header(gateway, fresh_simulator):
    rules = [
        {"op": "drop", "path": "temperature"},
        {"op": "cap", "path": "max_tokens", "max": 100},
        {"op": "header", "name": "X-Route-Tag", "value": "agents"},
    ]
    provider = provider_create("capped", fresh_simulator.openai_base, request_transforms=rules)
    model_create("capped-echo", [(provider, "sim-echo", 0)])
    key = key_create("capped")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    client.chat.completions.create(model="capped-echo", messages=MESSAGES, temperature=0.3, max_tokens=500)
    received = last_request(fresh_simulator)
    assert received["body"] == {"model": "sim-echo", "messages": MESSAGES, "max_tokens": 100}
    assert received["headers"]["x-route-tag"] == "agents"
