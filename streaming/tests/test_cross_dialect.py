"""/v1/chat/completions to an Anthropic-dialect deployment: the official openai SDK -> gateway
(translating both ways) -> simulator speaking Anthropic Messages, over loopback."""

import statistics
import time

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.ports import free_port
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me something about streams"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris today?"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture
def claude(fresh_simulator):
    """A public model `claude` served by an Anthropic-dialect provider, and a key for it."""
    provider = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    model_create("claude", [(provider, "sim-claude", 0)])
    model_create("claude-slow", [(provider, "sim-claude?tokens=20&interval_ms=100", 0)])
    model_create("claude-long", [(provider, "sim-claude?tokens=200&interval_ms=20", 0)])
    model_create("claude-drop", [(provider, "sim-claude?drop_after=3&tokens=10", 0)])
    return key_create("free")


def direct_message(simulator, messages=MESSAGES, **fields):
    """What the simulator answers when asked in Anthropic's own format."""
    client = anthropic.Anthropic(base_url=simulator.url, api_key="x", max_retries=0)
    return client.messages.create(model="sim-claude", max_tokens=4096, messages=messages, **fields)


def gateway_client(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_is_translated_into_openai_chunks(gateway, claude, fresh_simulator, include_usage):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = gateway_client(gateway, claude).chat.completions.create(
        model="claude", messages=MESSAGES, stream=True, **options
    )
    chunks = list(stream)
    expected = direct_message(fresh_simulator)

    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert "".join(contents) == expected.content[0].text
    assert len(contents) == expected.usage.output_tokens == 12, "one chunk per upstream token"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert {c.model for c in chunks} == {"claude"}
    assert len({c.id for c in chunks}) == 1
    usage = [c.usage for c in chunks if c.usage]
    if include_usage:
        assert chunks[-1].choices == [] and usage == [chunks[-1].usage]
        assert usage[0].prompt_tokens == expected.usage.input_tokens
        assert usage[0].completion_tokens == 12 and usage[0].total_tokens == expected.usage.input_tokens + 12
    else:
        assert usage == []

    sent = fresh_simulator.requests(model="sim-claude")[0]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["anthropic-version"] and sent["headers"]["auth_present"]
    assert sent["body"] == {"model": "sim-claude", "messages": MESSAGES, "max_tokens": 4096, "stream": True}

    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["endpoint"] == "chat.completions" and event["provider"] == "anthropic-sim"
    assert event["status_code"] == 200 and event["tokens_estimated"] is False
    assert event["prompt_tokens"] == expected.usage.input_tokens and event["completion_tokens"] == 12


def test_non_stream_is_translated_into_a_chat_completion(gateway, claude, fresh_simulator):
    raw = gateway_client(gateway, claude).chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "system", "content": "Be brief"}, *MESSAGES], temperature=0.5, seed=3
    )
    completion = raw.parse()
    expected = direct_message(fresh_simulator, system="Be brief")

    assert completion.object == "chat.completion" and completion.model == "claude"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == expected.content[0].text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == expected.usage.input_tokens
    assert completion.usage.completion_tokens == expected.usage.output_tokens
    assert raw.headers["x-gateway-provider"] == "anthropic-sim"
    sent = fresh_simulator.requests(model="sim-claude")[0]["body"]
    assert sent["system"] == "Be brief" and sent["temperature"] == 0.5 and "seed" not in sent

    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["completion_tokens"] == expected.usage.output_tokens and event["tokens_estimated"] is False


def test_tool_calls_non_stream(gateway, claude, fresh_simulator):
    completion = gateway_client(gateway, claude).chat.completions.create(
        model="claude", messages=WEATHER, tools=[TOOL], tool_choice="auto"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"location": "Paris"}
    assert call.id.startswith("call_")  # in the client's own style
    sent = fresh_simulator.requests(model="sim-claude")[0]["body"]
    assert sent["tools"] == [
        {"name": "get_weather", "description": "Current weather", "input_schema": TOOL["function"]["parameters"]}
    ]
    assert sent["tool_choice"] == {"type": "auto"}


def test_tool_calls_stream_and_the_conversation_continues(gateway, claude, fresh_simulator):
    fresh_simulator.configure(tool_id="toolu_01weather")
    client = gateway_client(gateway, claude)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(model="claude", messages=WEATHER, tools=[TOOL], stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = entry["id"] or delta.id
                entry["name"] = entry["name"] or (delta.function.name if delta.function else None)
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert orjson.loads(calls[0]["arguments"]) == {"location": "Paris"}

    # The client sends the tool result back the OpenAI way; Anthropic gets tool_use / tool_result blocks, under
    # its own id.
    follow_up = [
        *WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C and sunny"},
    ]
    answer = client.chat.completions.create(model="claude", messages=follow_up, tools=[TOOL])
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    sent = fresh_simulator.requests(model="sim-claude")[-1]["body"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_01weather", "name": "get_weather", "input": {"location": "Paris"}}
        ],
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01weather", "content": "18C and sunny"}],
    }


async def test_async_sdk_stream(gateway, claude, fresh_simulator):
    async with openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=claude, max_retries=0) as client:
        parts = []
        stream = await client.chat.completions.create(
            model="claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            parts += [c.delta.content for c in chunk.choices if c.delta.content]
            usage = chunk.usage or None
    async with anthropic.AsyncAnthropic(base_url=fresh_simulator.url, api_key="x", max_retries=0) as direct:
        expected = await direct.messages.create(model="sim-claude", max_tokens=100, messages=MESSAGES)
    assert "".join(parts) == expected.content[0].text
    assert usage.completion_tokens == expected.usage.output_tokens


def test_tier_output_cap_reaches_the_anthropic_request(gateway, fresh_simulator):
    provider = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    model_create("claude", [(provider, "sim-claude", 0)])
    key = key_create("capped", max_output_tokens=5)
    completion = gateway_client(gateway, key).chat.completions.create(model="claude", messages=MESSAGES, max_tokens=50)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert fresh_simulator.requests(model="sim-claude")[0]["body"]["max_tokens"] == 5


def test_each_event_arrives_on_its_own_at_upstream_pace(gateway, claude):
    arrivals = []
    body = {"model": "claude-slow", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", gateway.openai_base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {claude}"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for raw in response.iter_raw():
            if b'"content":"' in raw and b'"content":""' not in raw:
                arrivals.append((time.perf_counter(), raw.count(b"data: ")))
    assert len(arrivals) == 20
    assert all(count == 1 for _, count in arrivals)
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert 70 <= statistics.median(gaps) <= 160
    assert min(gaps) >= 30, gaps


def test_mid_stream_failure_becomes_openai_error_event(gateway, claude, fresh_simulator):
    body = {"model": "claude-drop", "messages": MESSAGES, "stream": True}
    response = httpx.post(
        gateway.openai_base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {claude}"}, timeout=10
    )
    assert response.status_code == 200
    datas = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    error = orjson.loads(datas[-2])["error"]
    assert "mid-stream" in error["message"] and error["code"] == "upstream_stream_error"
    contents = [orjson.loads(d)["choices"][0]["delta"].get("content") for d in datas[:-2]]
    assert len([c for c in contents if c]) == 3
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"
    with pytest.raises(openai.APIError, match="mid-stream"):
        list(
            gateway_client(gateway, claude).chat.completions.create(model="claude-drop", messages=MESSAGES, stream=True)
        )


def test_client_disconnect_closes_anthropic_upstream(gateway, claude, fresh_simulator):
    body = {"model": "claude-long", "messages": MESSAGES, "stream": True}
    events = 0
    with httpx.stream(
        "POST", gateway.openai_base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {claude}"}
    ) as response:
        for raw in response.iter_raw():
            events += raw.count(b"data: ")
            if events >= 4:
                break
        closed_at = time.time()
    records = fresh_simulator.wait_for_requests(
        lambda rs: rs and rs[-1]["disconnected"], timeout=2.0, model="sim-claude?tokens=200&interval_ms=20"
    )
    assert records[-1]["disconnected_at"] - closed_at < 1.0
    assert records[-1]["tokens_sent"] < 200
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["status_code"] == 499
    # The prompt count came from message_start; the completion is estimated from what was relayed.
    assert event["tokens_estimated"] is True
    assert event["prompt_tokens"] == direct_message(fresh_simulator).usage.input_tokens
    assert event["completion_tokens"] >= 2


@pytest.mark.parametrize("stream", [False, True])
def test_failover_from_openai_to_anthropic_deployment(gateway, fresh_simulator, stream):
    broken = provider_create("broken", f"http://127.0.0.1:{free_port()}/v1")
    good = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    model_create("mixed", [(broken, "sim-echo", 0), (good, "sim-claude", 1)])
    key = key_create("free")
    client = gateway_client(gateway, key)
    if stream:
        raw = client.chat.completions.with_raw_response.create(model="mixed", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model="mixed", messages=MESSAGES)
        text = raw.parse().choices[0].message.content
    assert text == direct_message(fresh_simulator).content[0].text
    assert raw.headers["x-gateway-provider"] == "anthropic-sim"
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["attempts"] == 2 and event["provider"] == "anthropic-sim" and event["status_code"] == 200


def test_upstream_client_error_comes_back_in_openai_shape(gateway, fresh_simulator):
    provider = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    model_create("claude-bad", [(provider, "sim-claude?fail=400", 0)])
    key = key_create("free")
    with pytest.raises(openai.BadRequestError) as caught:
        gateway_client(gateway, key).chat.completions.create(model="claude-bad", messages=MESSAGES)
    assert caught.value.body["code"] == "upstream_error"
    assert "simulated failure with status 400" in caught.value.body["message"]
    response = httpx.post(
        gateway.openai_base + "/chat/completions",
        json={"model": "claude-bad", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 400
    assert "'input_audio' content part" in response.json()["error"]["message"]


# Prompt caching, reasoning and structured output, both ways -------------------------------------


@pytest.fixture
def both(fresh_simulator):
    """`claude-*` on an Anthropic-dialect provider and `gpt-*` on an OpenAI one, reporting cache reads
    and reasoning."""
    claude = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    gpt = provider_create("openai-sim", fresh_simulator.openai_base)
    model_create("claude-cache", [(claude, "sim-claude?cached=4", 0)])
    model_create("gpt-cache", [(gpt, "sim-echo?cached=4", 0)])
    model_create("claude-think", [(claude, "sim-claude?reasoning=3&tokens=5", 0)])
    model_create("gpt-think", [(gpt, "sim-echo?reasoning=3&tokens=5", 0)])
    return key_create("free")


def anthropic_client(gateway, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def test_cache_reads_translate_both_ways(gateway, both):
    client = gateway_client(gateway, both)
    plain = client.chat.completions.create(model="claude-cache", messages=MESSAGES)
    assert plain.usage.prompt_tokens_details.cached_tokens == 4
    prompt_tokens = plain.usage.prompt_tokens
    chunks = list(
        client.chat.completions.create(
            model="claude-cache", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    final = [c.usage for c in chunks if c.usage][-1]
    assert final.prompt_tokens == prompt_tokens and final.prompt_tokens_details.cached_tokens == 4

    claude = anthropic_client(gateway, both)
    message = claude.messages.create(model="gpt-cache", max_tokens=50, messages=MESSAGES)
    assert message.usage.cache_read_input_tokens == 4
    assert message.usage.input_tokens + 4 == prompt_tokens
    with claude.messages.stream(model="gpt-cache", max_tokens=50, messages=MESSAGES) as stream:
        streamed = stream.get_final_message()
    assert streamed.usage.cache_read_input_tokens == 4 and streamed.usage.input_tokens + 4 == prompt_tokens
    events = wait_usage(lambda evs: len(evs) == 4)
    assert {e["cached_tokens"] for e in events} == {4}


def test_reasoning_translates_both_ways(gateway, both, fresh_simulator):
    client = gateway_client(gateway, both)
    chunks = list(
        client.chat.completions.create(model="claude-think", messages=MESSAGES, stream=True, reasoning_effort="high")
    )
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == " step1 step2 step3"
    sent = fresh_simulator.requests(model="sim-claude?reasoning=3&tokens=5")[-1]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert sent["max_tokens"] > 24576 and "temperature" not in sent
    plain = client.chat.completions.create(model="claude-think", messages=MESSAGES, reasoning_effort="low")
    assert plain.choices[0].message.model_extra["reasoning_content"] == " step1 step2 step3"

    claude = anthropic_client(gateway, both)
    thinking = {"type": "enabled", "budget_tokens": 3000}
    message = claude.messages.create(model="gpt-think", max_tokens=5000, messages=MESSAGES, thinking=thinking)
    assert message.content[0].type == "thinking" and message.content[0].thinking == " step1 step2 step3"
    assert fresh_simulator.requests(model="sim-echo?reasoning=3&tokens=5")[-1]["body"]["reasoning_effort"] == "medium"
    with claude.messages.stream(model="gpt-think", max_tokens=5000, messages=MESSAGES, thinking=thinking) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == " step1 step2 step3" and len(final.content[1].text.split()) == 5


def test_structured_output_and_choices_to_an_anthropic_provider(gateway, both, fresh_simulator):
    client = gateway_client(gateway, both)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    client.chat.completions.create(
        model="claude-cache",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
    )
    assert fresh_simulator.requests(model="sim-claude?cached=4")[-1]["body"]["output_format"] == {
        "type": "json_schema",
        "schema": schema,
    }
    with pytest.raises(openai.BadRequestError, match="json_object"):
        client.chat.completions.create(model="claude-cache", messages=MESSAGES, response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="'n' is 2"):
        client.chat.completions.create(model="claude-cache", messages=MESSAGES, n=2)
