"""/v1/messages end to end: the official anthropic SDK -> gateway -> simulator, over loopback.

Against an Anthropic-dialect deployment the body and every event pass through with only the model
rewritten; against an OpenAI-dialect one the gateway translates both ways."""

import statistics
import time

import anthropic
import httpx
import openai
import orjson
import pytest

from accounts.keys import key_generate
from tests.support.data import key_create, model_create, provider_create
from tests.support.ports import free_port
from tests.support.usage import usage_events, wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me something about streams"}]
WEATHER = [{"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris today?"}]}]
TOOL = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.fixture
def key(fresh_simulator):
    """Public models on an Anthropic-dialect provider (claude*) and an OpenAI-dialect one (gpt*)."""
    claude = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    gpt = provider_create("openai-sim", fresh_simulator.openai_base)
    for prefix, provider, upstream in (("claude", claude, "sim-claude"), ("gpt", gpt, "sim-echo")):
        model_create(prefix, [(provider, upstream, 0)])
        model_create(f"{prefix}-slow", [(provider, f"{upstream}?tokens=20&interval_ms=100", 0)])
        model_create(f"{prefix}-long", [(provider, f"{upstream}?tokens=200&interval_ms=20", 0)])
        model_create(f"{prefix}-drop", [(provider, f"{upstream}?drop_after=3&tokens=10", 0)])
    return key_create("free")


def through(gateway, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def direct(simulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=simulator.url, api_key="x", max_retries=0)


def direct_openai(simulator, messages, **fields):
    client = openai.OpenAI(base_url=simulator.openai_base, api_key="x", max_retries=0)
    return client.chat.completions.create(model="sim-echo", messages=messages, **fields)


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


def post(gateway, key, body, **headers) -> httpx.Response:
    if key:
        headers["x-api-key"] = key
    return httpx.post(gateway.url + "/v1/messages", json=body, headers=headers, timeout=10)


# Anthropic upstream: pass-through ---------------------------------------------------------------


def test_non_stream_passes_through(gateway, key, fresh_simulator):
    fields = {"max_tokens": 1000, "system": "Be brief", "metadata": {"user_id": "u1"}, "extra_body": {"top_k": 5}}
    raw = through(gateway, key).messages.with_raw_response.create(
        model="claude", messages=MESSAGES, extra_headers={"anthropic-beta": "feature-x"}, **fields
    )
    message = raw.parse()
    expected = direct(fresh_simulator).messages.create(model="sim-claude", messages=MESSAGES, **fields)
    assert message.model == "claude"
    assert message.model_dump(exclude={"id", "model"}) == expected.model_dump(exclude={"id", "model"})
    assert message.content[0].text and message.stop_reason == "end_turn"
    assert raw.headers["x-gateway-provider"] == "anthropic-sim"
    assert raw.headers["x-request-id"].startswith("req_")
    sent = fresh_simulator.requests(model="sim-claude")[0]
    assert sent["body"] == {
        "model": "sim-claude",
        "messages": MESSAGES,
        "max_tokens": 1000,
        "system": "Be brief",
        "metadata": {"user_id": "u1"},
        "top_k": 5,
    }
    assert sent["headers"]["anthropic-beta"] == "feature-x"
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["endpoint"] == "messages" and event["status_code"] == 200 and event["stream"] is False
    assert event["prompt_tokens"] == expected.usage.input_tokens
    assert event["completion_tokens"] == expected.usage.output_tokens
    assert event["tokens_estimated"] is False


def test_stream_passes_every_event_through(gateway, key, fresh_simulator):
    body = {"model": "claude", "max_tokens": 100, "messages": MESSAGES, "stream": True}
    gateway_text = post(gateway, key, body).text
    direct_text = httpx.post(
        fresh_simulator.url + "/v1/messages",
        json={**body, "model": "sim-claude"},
        headers={"x-api-key": "x", "anthropic-version": "2023-06-01"},
    ).text
    got, want = sse_events(gateway_text), sse_events(direct_text)
    assert [name for name, _ in got] == [name for name, _ in want]
    assert [name for name, _ in got][:3] == ["message_start", "content_block_start", "ping"]
    assert got[0][1]["message"]["model"] == "claude"
    for payload in (got[0][1], want[0][1]):
        del payload["message"]["id"], payload["message"]["model"]
    assert got == want

    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["endpoint"] == "messages" and event["stream"] is True
    assert event["completion_tokens"] == 12 and event["tokens_estimated"] is False
    assert event["prompt_tokens"] == want[0][1]["message"]["usage"]["input_tokens"]


def test_sdk_stream_helper(gateway, key, fresh_simulator):
    with through(gateway, key).messages.stream(model="claude", max_tokens=100, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    with direct(fresh_simulator).messages.stream(model="sim-claude", max_tokens=100, messages=MESSAGES) as stream:
        expected = stream.get_final_message()
    assert len(pieces) == 12
    assert "".join(pieces) == final.content[0].text == expected.content[0].text
    assert final.model == "claude"
    assert final.usage.output_tokens == expected.usage.output_tokens
    assert final.usage.input_tokens == expected.usage.input_tokens


def test_tier_output_cap_applies_to_max_tokens(gateway, fresh_simulator):
    provider = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    model_create("claude", [(provider, "sim-claude", 0)])
    capped = key_create("capped", max_output_tokens=5)
    message = through(gateway, capped).messages.create(model="claude", max_tokens=500, messages=MESSAGES)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5
    assert fresh_simulator.requests(model="sim-claude")[0]["body"]["max_tokens"] == 5


# OpenAI upstream: translated --------------------------------------------------------------------


def test_non_stream_translated_from_openai(gateway, key, fresh_simulator):
    message = through(gateway, key).messages.create(
        model="gpt",
        max_tokens=300,
        system="Be brief",
        messages=MESSAGES,
        stop_sequences=["zz"],
        extra_body={"top_k": 3},
    )
    openai_messages = [{"role": "system", "content": "Be brief"}, *MESSAGES]
    expected = direct_openai(fresh_simulator, openai_messages)
    assert message.type == "message" and message.role == "assistant" and message.model == "gpt"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected.choices[0].message.content
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == expected.usage.prompt_tokens
    assert message.usage.output_tokens == expected.usage.completion_tokens
    sent = fresh_simulator.requests(model="sim-echo")[0]["body"]
    assert sent == {"model": "sim-echo", "messages": openai_messages, "max_tokens": 300, "stop": ["zz"]}
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["endpoint"] == "messages" and event["provider"] == "openai-sim"
    assert event["completion_tokens"] == expected.usage.completion_tokens


def test_stream_translated_from_openai_has_the_full_event_sequence(gateway, key, fresh_simulator):
    body = {"model": "gpt", "max_tokens": 100, "messages": MESSAGES, "stream": True}
    response = post(gateway, key, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 12,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == payload["type"] for name, payload in events)
    expected = direct_openai(fresh_simulator, MESSAGES)
    text = "".join(payload["delta"]["text"] for _, payload in events[2:14])
    assert text == expected.choices[0].message.content
    assert events[0][1]["message"]["model"] == "gpt"
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"] == {
        "output_tokens": expected.usage.completion_tokens,
        "input_tokens": expected.usage.prompt_tokens,
    }
    sent = fresh_simulator.requests(model="sim-echo")[0]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["completion_tokens"] == 12 and event["tokens_estimated"] is False


def test_sdk_stream_translated_from_openai(gateway, key, fresh_simulator):
    with through(gateway, key).messages.stream(model="gpt", max_tokens=100, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    expected = direct_openai(fresh_simulator, MESSAGES)
    assert "".join(pieces) == final.content[0].text == expected.choices[0].message.content
    assert len(pieces) == 12
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == expected.usage.prompt_tokens
    assert final.usage.output_tokens == expected.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_translated_from_openai(gateway, key, fresh_simulator, stream):
    fresh_simulator.configure(tool_id="call_weather1")
    client = through(gateway, key)
    fields = {"model": "gpt", "max_tokens": 100, "messages": WEATHER, "tools": [TOOL], "tool_choice": {"type": "auto"}}
    if stream:
        with client.messages.stream(**fields) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**fields)
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"location": "Paris"}
    assert block.id.startswith("toolu_")  # in the client's own style
    sent = fresh_simulator.requests(model="sim-echo")[0]["body"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Current weather", "parameters": TOOL["input_schema"]},
        }
    ]
    assert sent["tool_choice"] == "auto"

    # The tool result goes back the Anthropic way; the OpenAI provider gets tool_calls / a tool message, under
    # its own id.
    follow_up = [
        *WEATHER,
        {"role": "assistant", "content": [block.model_dump(include={"type", "id", "name", "input"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18C"}]},
    ]
    answer = client.messages.create(model="gpt", max_tokens=100, messages=follow_up, tools=[TOOL])
    assert answer.stop_reason == "end_turn" and answer.content[0].text
    sent = fresh_simulator.requests(model="sim-echo")[-1]["body"]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_weather1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_weather1", "content": "18C"}


@pytest.mark.parametrize("model", ["claude", "gpt"])
async def test_async_sdk(gateway, key, fresh_simulator, model):
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0) as client:
        message = await client.messages.create(model=model, max_tokens=100, messages=MESSAGES)
        async with client.messages.stream(model=model, max_tokens=100, messages=MESSAGES) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    assert len(pieces) == 12
    assert "".join(pieces) == message.content[0].text == final.content[0].text
    assert message.model == final.model == model
    assert final.usage.output_tokens == message.usage.output_tokens == 12


# Relay semantics: pace, failover, disconnect, mid-stream failure --------------------------------


@pytest.mark.parametrize("model", ["claude-slow", "gpt-slow"])
def test_each_event_arrives_on_its_own_at_upstream_pace(gateway, key, model):
    arrivals = []
    body = {"model": model, "max_tokens": 100, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers={"x-api-key": key}) as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        for raw in response.iter_raw():
            if b'"text_delta"' in raw:
                arrivals.append((time.perf_counter(), raw.count(b"event: content_block_delta")))
    # 20 tokens, 20 separate network reads, each with one text delta, ~100 ms apart.
    assert len(arrivals) == 20
    assert all(count == 1 for _, count in arrivals)
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert 70 <= statistics.median(gaps) <= 160
    assert min(gaps) >= 30, gaps


@pytest.mark.parametrize("failure", ["fail=500", "refused"])
@pytest.mark.parametrize("stream", [False, True])
def test_failing_first_deployment_is_invisible(gateway, fresh_simulator, failure, stream):
    if failure == "refused":
        broken = provider_create("broken", f"http://127.0.0.1:{free_port()}", dialect="anthropic")
        first = (broken, "sim-claude", 0)
    else:
        broken = provider_create("broken", fresh_simulator.url, dialect="anthropic")
        first = (broken, f"sim-claude?{failure}", 0)
    good = provider_create("good", fresh_simulator.url, dialect="anthropic")
    model_create("claude-failover", [first, (good, "sim-claude", 1)])
    key = key_create("free")
    client = through(gateway, key)
    fields = {"model": "claude-failover", "max_tokens": 100, "messages": MESSAGES}
    if stream:
        raw = client.messages.with_raw_response.create(stream=True, **fields)
        text = "".join(e.delta.text for e in raw.parse() if e.type == "content_block_delta")
    else:
        raw = client.messages.with_raw_response.create(**fields)
        text = raw.parse().content[0].text
    expected = direct(fresh_simulator).messages.create(model="sim-claude", max_tokens=100, messages=MESSAGES)
    assert text == expected.content[0].text
    assert raw.headers["x-gateway-provider"] == "good"
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["attempts"] == 2 and event["provider"] == "good" and event["status_code"] == 200


def test_failover_from_anthropic_to_openai_deployment(gateway, fresh_simulator):
    broken = provider_create("broken", fresh_simulator.url, dialect="anthropic")
    good = provider_create("good", fresh_simulator.openai_base)
    model_create("mixed", [(broken, "sim-claude?fail=503", 0), (good, "sim-echo", 1)])
    key = key_create("free")
    with through(gateway, key).messages.stream(model="mixed", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text == direct_openai(fresh_simulator, MESSAGES).choices[0].message.content
    assert len(fresh_simulator.requests(model="sim-claude?fail=503")) == 1


@pytest.mark.parametrize(("model", "upstream"), [("claude-long", "sim-claude"), ("gpt-long", "sim-echo")])
def test_client_disconnect_closes_upstream_quickly(gateway, key, fresh_simulator, model, upstream):
    body = {"model": model, "max_tokens": 1000, "messages": MESSAGES, "stream": True}
    events = 0
    with httpx.stream("POST", gateway.url + "/v1/messages", json=body, headers={"x-api-key": key}) as response:
        for raw in response.iter_raw():
            events += raw.count(b"event: content_block_delta")
            if events >= 3:
                break
        closed_at = time.time()
    records = fresh_simulator.wait_for_requests(
        lambda rs: rs and rs[-1]["disconnected"], timeout=2.0, model=f"{upstream}?tokens=200&interval_ms=20"
    )
    assert records[-1]["disconnected_at"] - closed_at < 1.0
    assert records[-1]["tokens_sent"] < 200
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["status_code"] == 499 and event["endpoint"] == "messages"
    assert event["completion_tokens"] >= 2


@pytest.mark.parametrize("model", ["claude-drop", "gpt-drop"])
def test_mid_stream_failure_becomes_anthropic_error_event(gateway, key, fresh_simulator, model):
    body = {"model": model, "max_tokens": 100, "messages": MESSAGES, "stream": True}
    response = post(gateway, key, body)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": events[-1][1]["error"]["message"]}},
    )
    assert "mid-stream" in events[-1][1]["error"]["message"]
    assert [p["delta"]["type"] for name, p in events if name == "content_block_delta"] == ["text_delta"] * 3
    assert "message_stop" not in [name for name, _ in events]
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"
    with pytest.raises(anthropic.APIStatusError, match="mid-stream"):
        with through(gateway, key).messages.stream(model=model, max_tokens=100, messages=MESSAGES) as stream:
            list(stream.text_stream)


# Errors in Anthropic's shape --------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, error_type: str, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    for needle in needles:
        assert needle in body["error"]["message"], body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        # What the gateway itself needs, whatever the provider.
        ({"model": "claude", "messages": MESSAGES, "max_tokens": 0}, "'max_tokens' must be a positive integer"),
        ({"model": "claude", "messages": MESSAGES, "max_tokens": "5"}, "'max_tokens' must be a positive integer"),
        ({"messages": MESSAGES, "max_tokens": 5}, "'model' is required"),
        ({"model": "claude", "max_tokens": 5}, "'messages' is required"),
        ({"model": "claude", "messages": [], "max_tokens": 5}, "at least one message"),
        ({"model": "claude", "messages": {"role": "user"}, "max_tokens": 5}, "'messages' must be an array"),
        ({"model": "claude", "messages": MESSAGES, "max_tokens": 5, "stream": "yes"}, "'stream' must be a boolean"),
        # Same dialect: the provider judges the body, and its 400 comes back in Anthropic's shape.
        ({"model": "claude", "messages": MESSAGES}, "max_tokens"),
        # Translated: what the other side cannot express is refused, naming it.
        ({"model": "gpt", "messages": [{"role": "user"}], "max_tokens": 5}, "'messages[0].content' must be"),
        ({"model": "gpt", "messages": [{"role": "user", "content": 3}], "max_tokens": 5}, "'messages[0].content'"),
        ({"model": "gpt", "messages": [{"role": "tool", "content": "x"}], "max_tokens": 5}, "'tool'"),
        ({"model": "gpt", "system": 5, "messages": MESSAGES, "max_tokens": 5}, "'system' must be"),
        (
            {"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "'document' content block",
        ),
    ],
)
def test_invalid_bodies_are_400_naming_the_problem(gateway, key, body, needle):
    assert_error(post(gateway, key, body), 400, "invalid_request_error", needle)


def test_query_and_version_headers_reach_an_anthropic_provider(gateway, key, fresh_simulator):
    body = {"model": "claude", "max_tokens": 20, "messages": MESSAGES}
    headers = {"x-api-key": key, "anthropic-version": "2099-01-01", "anthropic-beta": "b1,b2"}
    response = httpx.post(gateway.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    sent = fresh_simulator.requests()[-1]
    assert sent["query"] == "beta=true"
    assert sent["headers"]["anthropic-version"] == "2099-01-01" and sent["headers"]["anthropic-beta"] == "b1,b2"
    # Not to an OpenAI-dialect provider: those are Anthropic's own.
    httpx.post(gateway.url + "/v1/messages?beta=true", json={**body, "model": "gpt"}, headers=headers, timeout=30)
    sent = fresh_simulator.requests()[-1]
    assert sent["query"] == "" and "anthropic-beta" not in sent["headers"]


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_system_messages_inside_messages(gateway, key, fresh_simulator, model):
    """Claude Code sends system text as messages with role 'system': passed through to an Anthropic
    provider as it is, and sent as system text to an OpenAI one."""
    messages = [*MESSAGES, {"role": "system", "content": [{"type": "text", "text": "Be brief"}]}]
    body = {"model": model, "max_tokens": 50, "messages": messages, "cache_hint": {"any": ["thing"]}}
    response = post(gateway, key, body)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"]
    sent = fresh_simulator.requests()[-1]["body"]
    if model == "claude":
        assert sent["messages"] == messages and sent["cache_hint"] == {"any": ["thing"]}
    else:
        assert {"role": "system", "content": "Be brief"} in sent["messages"]
        assert "cache_hint" not in sent


def test_bad_json_and_wrong_method(gateway, key):
    response = httpx.post(gateway.url + "/v1/messages", content=b"{nope", headers={"x-api-key": key})
    assert_error(response, 400, "invalid_request_error", "not valid JSON")
    response = httpx.get(gateway.url + "/v1/messages", headers={"x-api-key": key})
    assert_error(response, 405, "invalid_request_error", "use POST for /v1/messages")


def test_auth_errors(gateway, key):
    body = {"model": "claude", "max_tokens": 5, "messages": MESSAGES}
    assert_error(post(gateway, None, body), 401, "authentication_error", "no API key")
    assert_error(post(gateway, key_generate(), body), 401, "authentication_error", "invalid")
    with pytest.raises(anthropic.AuthenticationError) as caught:
        through(gateway, key_generate()).messages.create(**body)
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_unknown_and_forbidden_models(gateway, key, fresh_simulator):
    with pytest.raises(anthropic.NotFoundError) as caught:
        through(gateway, key).messages.create(model="nope", max_tokens=5, messages=MESSAGES)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "the model 'nope' does not exist"},
    }
    from providers.models import Model

    limited = key_create("limited", models=[Model.objects.get(name="gpt")])
    with pytest.raises(anthropic.PermissionDeniedError, match="does not allow the model 'claude'"):
        through(gateway, limited).messages.create(model="claude", max_tokens=5, messages=MESSAGES)


def test_rate_limit_is_429_with_retry_after(gateway, key):
    limited = key_create("rpm1", rpm=1)
    client = through(gateway, limited)
    client.messages.create(model="claude", max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="claude", max_tokens=5, messages=MESSAGES)
    assert caught.value.status_code == 429
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-request-id"].startswith("req_")


def test_all_deployments_failing_is_502_in_anthropic_shape(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.url, dialect="anthropic")
    model_create("claude-down", [(sim, "sim-claude?fail=500", 0)])
    key = key_create("free")
    response = post(gateway, key, {"model": "claude-down", "max_tokens": 5, "messages": MESSAGES})
    assert_error(response, 502, "api_error", "all deployments of 'claude-down' failed")
    with pytest.raises(anthropic.InternalServerError):
        through(gateway, key).messages.create(model="claude-down", max_tokens=5, messages=MESSAGES)


def test_upstream_client_error_passes_through_in_anthropic_shape(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("gpt-bad", [(sim, "sim-echo?fail=400", 0)])
    key = key_create("free")
    response = post(gateway, key, {"model": "gpt-bad", "max_tokens": 5, "messages": MESSAGES})
    assert_error(response, 400, "invalid_request_error", "simulated failure with status 400")
    assert len(fresh_simulator.requests(model="sim-echo?fail=400")) == 1


# count_tokens ------------------------------------------------------------------------------------

COUNT_TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}}},
    }
]


def test_count_tokens_with_the_sdk_on_both_kinds_of_deployment(gateway, key, fresh_simulator):
    client = through(gateway, key)
    system = "You answer in one word."
    counted = client.messages.count_tokens(model="claude", system=system, messages=MESSAGES)
    expected = direct(fresh_simulator).messages.count_tokens(model="sim-claude", system=system, messages=MESSAGES)
    assert counted.input_tokens == expected.input_tokens > 0
    sent = fresh_simulator.requests(path="/v1/messages/count_tokens")[0]
    assert sent["model"] == "sim-claude" and sent["body"]["system"] == system
    # An OpenAI-dialect deployment cannot count: the gateway estimates, tools included.
    plain = client.messages.count_tokens(model="gpt", system=system, messages=MESSAGES)
    with_tools = client.messages.count_tokens(model="gpt", system=system, messages=MESSAGES, tools=COUNT_TOOLS)
    assert 5 < plain.input_tokens < with_tools.input_tokens
    # (one through the gateway, one direct; none for the OpenAI-dialect model)
    assert [r["model"] for r in fresh_simulator.requests(path="/v1/messages/count_tokens")] == ["sim-claude"] * 2
    # Counting is not a completion: nothing reaches the usage queue.
    assert usage_events() == []


def test_count_tokens_errors_in_anthropic_shape(gateway, key):
    url = gateway.url + "/v1/messages/count_tokens"
    body = {"model": "claude", "messages": MESSAGES}
    assert_error(httpx.post(url, json=body, timeout=10), 401, "authentication_error", "no API key")
    unknown = httpx.post(url, json={**body, "model": "nope"}, headers={"x-api-key": key}, timeout=10)
    assert_error(unknown, 404, "not_found_error", "'nope'")
    bad = httpx.post(url, json={"model": "claude"}, headers={"x-api-key": key}, timeout=10)
    assert_error(bad, 400, "invalid_request_error", "'messages' is required")
    untranslatable = {"model": "gpt", "messages": [{"role": "user", "content": [{"type": "document"}]}]}
    response = httpx.post(url, json=untranslatable, headers={"x-api-key": key}, timeout=10)
    assert_error(response, 400, "invalid_request_error", "'document' content block")
