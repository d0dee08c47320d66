"""/v1/responses end to end: the official openai SDK (sync and async) -> gateway process -> simulator,
passed through to a provider that speaks Responses and translated for Chat Completions and Anthropic
Messages deployments; tool round trips, failover, usage and refusals."""

import anthropic
import httpx
import openai
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import await_usage, wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Tell me something about streams"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}
# public model -> (upstream model the simulator sees, path it is asked on)
SERVED = {
    "resp": ("sim-echo", "/v1/responses"),
    "chat": ("sim-echo", "/v1/chat/completions"),
    "claude": ("sim-claude", "/v1/messages"),
}


@pytest.fixture
def key(fresh_simulator):
    responses = provider_create("sim-responses", fresh_simulator.openai_base, dialect="responses")
    chat = provider_create("sim-chat", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("resp", [(responses, "sim-echo", 0)])
    model_create("chat", [(chat, "sim-echo", 0)])
    model_create("claude", [(claude, "sim-claude", 0)])
    model_create("chat-think", [(chat, "sim-echo?reasoning=3", 0)])
    model_create("resp-failover", [(responses, "sim-echo?fail=500", 0), (responses, "sim-echo", 1)])
    model_create("chat-failover", [(chat, "sim-echo?fail=500", 0), (chat, "sim-echo", 1)])
    model_create("resp-drop", [(responses, "sim-echo?drop_after=3", 0)])
    model_create("chat-drop", [(chat, "sim-echo?drop_after=3", 0)])
    return key_create("free")


def client(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)


def direct(simulator, upstream_model: str, **fields):
    """What the simulator answers when asked in the Responses format itself."""
    sim = openai.OpenAI(base_url=simulator.openai_base, api_key="x", max_retries=0)
    return sim.responses.create(model=upstream_model, **fields)


@pytest.mark.parametrize("model", ["resp", "chat", "claude"])
def test_create(gateway, key, fresh_simulator, model):
    upstream_model, path = SERVED[model]
    response = client(gateway, key).responses.create(model=model, input=PROMPT)
    expected = direct(fresh_simulator, upstream_model, input=PROMPT)

    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.model == model
    assert response.output_text == expected.output_text and len(expected.output_text.split()) == 12
    message = response.output[0]
    assert message.type == "message" and message.content[0].annotations == []
    assert response.usage.input_tokens == expected.usage.input_tokens
    assert response.usage.output_tokens == 12
    assert response.usage.total_tokens == expected.usage.input_tokens + 12

    sent = fresh_simulator.requests(path=path)[0]
    if model == "resp":
        assert sent["body"] == {"model": "sim-echo", "input": PROMPT}, "passed through, only the model rewritten"
    elif model == "chat":
        assert sent["body"] == {"model": "sim-echo", "messages": [{"role": "user", "content": PROMPT}]}
    else:
        assert sent["body"]["messages"] == [{"role": "user", "content": PROMPT}]
    events = wait_usage(lambda evs: any(e["endpoint"] == "responses" for e in evs))
    event = next(e for e in events if e["endpoint"] == "responses")
    assert event["model"] == model and event["status_code"] == 200 and not event["stream"]
    assert event["prompt_tokens"] == expected.usage.input_tokens and event["completion_tokens"] == 12


@pytest.mark.parametrize("model", ["resp", "chat", "claude"])
def test_stream(gateway, key, fresh_simulator, model):
    upstream_model, path = SERVED[model]
    expected = direct(fresh_simulator, upstream_model, input=[{"role": "user", "content": PROMPT}])
    with client(gateway, key).responses.stream(model=model, input=[{"role": "user", "content": PROMPT}]) as stream:
        events = list(stream)
        final = stream.get_final_response()

    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == expected.output_text and len(deltas) == 12, "one event per upstream token"
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types.index("response.output_item.added") < types.index("response.content_part.added")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == expected.output_text and final.model == model
    assert final.usage.output_tokens == 12 and final.usage.input_tokens == expected.usage.input_tokens
    assert fresh_simulator.requests(path=path)[-1]["stream"] is True
    usage = wait_usage(lambda evs: any(e["endpoint"] == "responses" for e in evs))
    event = next(e for e in usage if e["endpoint"] == "responses")
    assert event["stream"] and event["completion_tokens"] == 12 and not event["tokens_estimated"]


async def test_async_create_and_stream_with_reasoning(gateway, key):
    async_client = openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    response = await async_client.responses.create(model="chat-think", input=PROMPT, reasoning={"effort": "low"})
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == " step1 step2 step3"
    async with async_client.responses.stream(model="chat-think", input=PROMPT) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    thinking = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(thinking) == " step1 step2 step3"
    assert final.output_text == response.output_text
    assert [item.type for item in final.output] == ["reasoning", "message"]
    await await_usage(lambda evs: len([e for e in evs if e["endpoint"] == "responses"]) == 2)
    await async_client.close()


@pytest.mark.parametrize("model", ["resp", "chat", "claude"])
@pytest.mark.parametrize("streamed", [False, True])
def test_function_tool_round_trip(gateway, key, fresh_simulator, model, streamed):
    gateway_client = client(gateway, key)
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    if streamed:
        with gateway_client.responses.stream(model=model, input=question, tools=[WEATHER_TOOL]) as stream:
            arguments = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
            first = stream.get_final_response()
        assert "".join(arguments) == '{"location": "Paris"}'
    else:
        first = gateway_client.responses.create(model=model, input=question, tools=[WEATHER_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments.replace(" ", "") == '{"location":"Paris"}' and call.call_id
    assert first.output_text == ""

    follow_up = [
        *question,
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    second = gateway_client.responses.create(model=model, input=follow_up, tools=[WEATHER_TOOL])
    assert second.output[0].type == "message" and len(second.output_text.split()) == 12

    sent = fresh_simulator.requests(path=SERVED[model][1])[-1]["body"]
    if model == "resp":
        assert sent["input"] == follow_up
    elif model == "chat":
        assistant, tool = sent["messages"][1:]
        assert assistant["tool_calls"][0]["id"] == call.call_id and tool["tool_call_id"] == call.call_id
        assert tool["content"] == "Sunny, 21 C"
    else:
        assistant, result = sent["messages"][1:]
        assert assistant["content"][0]["type"] == "tool_use" and assistant["content"][0]["input"] == {
            "location": "Paris"
        }
        assert result["content"][0]["tool_use_id"] == assistant["content"][0]["id"]


@pytest.mark.parametrize("model", ["resp-failover", "chat-failover"])
def test_failover_and_usage(gateway, key, fresh_simulator, model):
    raw = client(gateway, key).responses.with_raw_response.create(model=model, input=PROMPT)
    assert raw.headers["x-gateway-route"] == "default; attempts=2"
    assert len(raw.parse().output_text.split()) == 12
    assert [r["status"] for r in fresh_simulator.requests()] == [500, 200]
    events = wait_usage(lambda evs: any(e["endpoint"] == "responses" for e in evs))
    event = next(e for e in events if e["endpoint"] == "responses")
    assert event["attempts"] == 2 and event["status_code"] == 200 and event["completion_tokens"] == 12


@pytest.mark.parametrize("model", ["resp-drop", "chat-drop"])
def test_upstream_drop_mid_stream_ends_with_an_error_event(gateway, key, model):
    with client(gateway, key).responses.stream(model=model, input=PROMPT) as stream:
        events = list(stream)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3 and events[-1].type == "error"
    assert events[-1].code == "upstream_stream_error" and "mid-stream" in events[-1].message
    event = wait_usage(lambda evs: any(e["endpoint"] == "responses" for e in evs))[-1]
    assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "resp"}, "input", "'input' is required"),
        ({"model": "resp", "input": []}, "input", "at least one item"),
        ({"model": "resp", "input": ["hi"]}, "input[0]", "must be an object"),
        ({"model": "resp", "input": "hi", "max_output_tokens": 0}, "max_output_tokens", "positive integer"),
        ({"model": "resp", "input": "hi", "stream": "yes"}, "stream", "boolean"),
        ({"model": "resp", "input": "hi", "previous_response_id": 7}, "previous_response_id", "non-empty string"),
        ({"model": "chat", "input": "hi", "conversation": "conv_1"}, "conversation", "send the full input"),
        ({"model": "chat", "input": [{"type": "item_reference", "id": "x"}]}, "input[0]", "item_reference"),
    ],
)
def test_bad_requests_name_the_field(gateway, key, fresh_simulator, body, param, words):
    response = httpx.post(f"{gateway.openai_base}/responses", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert fresh_simulator.requests() == []


def test_sdk_raises_not_found_for_an_unknown_previous_response_id(gateway, key, fresh_simulator):
    with pytest.raises(openai.NotFoundError, match="resp_123") as raised:
        client(gateway, key).responses.create(model="resp", input=PROMPT, previous_response_id="resp_123")
    assert raised.value.body["param"] == "previous_response_id"
    assert fresh_simulator.requests() == []


def test_chat_and_messages_clients_reach_a_responses_provider(gateway, key, fresh_simulator):
    chat_client = client(gateway, key)
    reply = chat_client.chat.completions.create(model="resp", messages=[{"role": "user", "content": PROMPT}])
    sent = fresh_simulator.requests(path="/v1/responses")[-1]["body"]
    assert sent == {
        "model": "sim-echo",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": PROMPT}]}],
        "store": False,
    }
    expected = direct(fresh_simulator, "sim-echo", input=sent["input"]).output_text
    assert reply.choices[0].message.content == expected and reply.usage.completion_tokens == 12
    chunks = list(
        chat_client.chat.completions.create(
            model="resp",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}],
            stream=True,
        )
    )
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments for c in calls) == '{"location": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]

    messages_client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    with messages_client.messages.stream(
        model="resp", max_tokens=256, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected and final.stop_reason == "end_turn" and final.usage.output_tokens == 12
