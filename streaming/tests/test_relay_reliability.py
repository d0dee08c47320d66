"""The relay under conditions a happy path never shows: long silent pauses (SSE keepalive), one bad
deployment among good ones (breaker per deployment), providers that count no tokens, and the gateway's
own failures (recorded as what they are). Real gateway processes, Redis and the simulator over loopback."""

import asyncio
import time

import anthropic
import httpx
import openai
import orjson
import pytest
from django.test import override_settings

from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

MESSAGES = [{"role": "user", "content": "hello"}]
# Long pauses between events once the stream has started (a model thinking between tokens).
PAUSED = "sim-mini?tokens=3&interval_ms=700"


def _sse_blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


@pytest.fixture
def keepalive_gateway(gateway_factory):
    return gateway_factory(GATEWAY_SSE_KEEPALIVE_SECONDS="0.25")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_silent_stream_gets_keepalive_comments_between_events_only(keepalive_gateway, fresh_simulator, path):
    openai_sim = provider_create("sim-openai", fresh_simulator.openai_base)
    anthropic_sim = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("paused", [(openai_sim, PAUSED, 0)])
    model_create("paused-claude", [(anthropic_sim, PAUSED, 0)])
    key = key_create("free")
    for model in ("paused", "paused-claude"):
        body = {"model": model, "messages": MESSAGES, "stream": True, "max_tokens": 50}
        response = httpx.post(keepalive_gateway.url + path, json=body, timeout=20,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert response.status_code == 200
        blocks = _sse_blocks(response.text)
        keepalives = [i for i, block in enumerate(blocks) if block == ": keepalive"]
        # Two silences of 0.7 s with a 0.25 s keepalive: two or so in each, and none at the very start.
        assert 3 <= len(keepalives) <= 8, blocks
        assert keepalives[0] > 0
        # Every other block is a whole event: a comment never lands inside one.
        for block in blocks:
            assert block == ": keepalive" or "data: " in block, block

        # Not streamed: a plain JSON body, no comment anywhere.
        body["stream"] = False
        plain = httpx.post(keepalive_gateway.url + path, json=body, timeout=20,
                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert plain.status_code == 200 and "keepalive" not in plain.text
        orjson.loads(plain.content)


@pytest.mark.django_db(transaction=True)
def test_both_sdks_read_through_keepalives(keepalive_gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-claude", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("paused", [(sim, PAUSED, 0)])
    model_create("paused-claude", [(claude, PAUSED, 0)])
    key = key_create("free")
    direct = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    expected = direct.chat.completions.create(model=PAUSED, messages=MESSAGES).choices[0].message.content

    client = openai.OpenAI(base_url=keepalive_gateway.openai_base, api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model="paused", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    messages = anthropic.Anthropic(base_url=keepalive_gateway.url, api_key=key, max_retries=0)
    with messages.messages.stream(model="paused-claude", max_tokens=50, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == expected
        final = stream.get_final_message()
    assert final.usage.output_tokens == 3


@pytest.mark.django_db(transaction=True)
def test_a_silent_compare_stream_gets_keepalives_too(keepalive_gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("paused", [(sim, PAUSED, 0)])
    model_create("also-paused", [(sim, PAUSED, 0)])
    key = key_create("free")
    body = {"models": ["paused", "also-paused"], "messages": MESSAGES}
    response = httpx.post(keepalive_gateway.openai_base + "/compare", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    blocks = _sse_blocks(response.text)
    assert 3 <= blocks.count(": keepalive") <= 8
    assert blocks[-1] == "data: [DONE]"
    events = [orjson.loads(block[6:]) for block in blocks if block.startswith("data: {")]
    assert [event["type"] for event in events].count("done") == 2


@pytest.mark.django_db(transaction=True)
def test_one_bad_deployment_opens_only_its_own_breaker(gateway_factory, fresh_simulator):
    """Two models on one provider; one model's upstream fails every time (failover to a second provider
    serves it). Its breaker opens, and the provider's other model is still sent to that provider."""
    gateway = gateway_factory(GATEWAY_BREAKER_FAILURES="2", GATEWAY_BREAKER_COOLDOWN_SECONDS="60")
    shared = provider_create("shared", fresh_simulator.openai_base)
    spare = provider_create("spare", fresh_simulator.openai_base)
    model_create("flaky", [(shared, "sim-mini?fail=500", 0), (spare, "sim-mini?tokens=3", 1)])
    model_create("steady", [(shared, "sim-mini?tokens=4", 0), (spare, "sim-large?tokens=4", 1)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    for _ in range(4):
        client.chat.completions.create(model="flaky", messages=MESSAGES)
        client.chat.completions.create(model="steady", messages=MESSAGES)
        time.sleep(0.6)  # past the availability cache
    # The bad deployment was tried until its breaker opened (2 failures), then skipped.
    assert len(fresh_simulator.requests(model="sim-mini?fail=500")) == 2
    # The provider's healthy deployment kept serving its model: never sent to the spare.
    assert len(fresh_simulator.requests(model="sim-mini?tokens=4")) == 4
    assert fresh_simulator.requests(model="sim-large?tokens=4") == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("upstream_dialect", ["openai", "anthropic"])
def test_a_provider_that_counts_nothing_still_gives_openai_clients_usage(gateway, fresh_simulator, upstream_dialect):
    base = fresh_simulator.openai_base if upstream_dialect == "openai" else fresh_simulator.anthropic_base
    sim = provider_create("sim", base, dialect=upstream_dialect)
    model_create("mute", [(sim, "sim-mini?tokens=7&no_usage=1", 0)])
    key = key_create("free")
    body = {"model": "mute", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(gateway.openai_base + "/chat/completions", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    datas = [block[6:] for block in _sse_blocks(response.text) if block.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    usage = orjson.loads(datas[-2])["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0 and usage["estimated"] is True
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["tokens_estimated"] is True
    # The client and the books agree on the gateway's count.
    assert (event["prompt_tokens"], event["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    # The SDK reads it as ordinary usage.
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model="mute", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    assert [c.usage.completion_tokens for c in stream if c.usage] == [usage["completion_tokens"]]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("upstream_dialect", ["openai", "anthropic"])
def test_a_provider_that_counts_nothing_still_gives_anthropic_clients_usage(gateway, fresh_simulator, upstream_dialect):
    base = fresh_simulator.openai_base if upstream_dialect == "openai" else fresh_simulator.anthropic_base
    sim = provider_create("sim", base, dialect=upstream_dialect)
    model_create("mute", [(sim, "sim-mini?tokens=7&no_usage=1", 0)])
    key = key_create("free")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    with client.messages.stream(model="mute", max_tokens=50, messages=MESSAGES) as stream:
        list(stream.text_stream)
        final = stream.get_final_message()
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["tokens_estimated"] is True and event["completion_tokens"] > 0
    assert final.usage.output_tokens == event["completion_tokens"]


@pytest.mark.django_db(transaction=True)
def test_a_gateway_failure_is_recorded_as_500_not_as_a_client_disconnect(redis_server, fresh_simulator, monkeypatch):
    """A defect in the relay (forced here by making the stream bridge raise) is a 500 on the books and an
    error event plus a clean end for the client; not streamed, a 500 in the client's dialect."""
    from aigateway.asgi import application
    from providers.upstream import upstream_clients_close
    from streaming import relay

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-mini?tokens=5", 0)])
    key = key_create("free", max_concurrent=2)

    def broken_feed(self, event):
        raise RuntimeError("defect in the bridge")

    def broken_complete(*args, **kwargs):
        raise RuntimeError("defect in the completion path")

    monkeypatch.setattr(relay.StreamBridge, "feed", broken_feed)
    monkeypatch.setattr(relay, "_complete", broken_complete)

    async def run():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            headers = {"Authorization": f"Bearer {key}"}
            body = {"model": "sim-fast", "messages": MESSAGES, "stream": True}
            streamed = await client.post("/v1/chat/completions", json=body, headers=headers)
            body["stream"] = False
            plain = await client.post("/v1/chat/completions", json=body, headers=headers)
        await relay.background_drain()
        await upstream_clients_close()
        return streamed, plain

    with override_settings(DEBUG=False):
        streamed, plain = asyncio.run(run())
    assert streamed.status_code == 200
    datas = [block[6:] for block in _sse_blocks(streamed.text) if block.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    assert orjson.loads(datas[-2])["error"]["code"] == "internal_error"
    assert plain.status_code == 500 and plain.json()["error"]["code"] == "internal_error"
    assert "defect" not in streamed.text + plain.text
    events = wait_usage(lambda events: len(events) == 2)
    assert sorted((e["stream"], e["status_code"], e["error_type"]) for e in events) == [
        (False, 500, "internal_error"),
        (True, 500, "internal_error"),
    ]
