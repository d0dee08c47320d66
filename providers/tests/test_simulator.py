"""The upstream simulator over real loopback HTTP: both wire formats, pacing, injected failures, control API."""

import hashlib
import statistics
import time
from urllib.parse import quote

import anthropic
import httpx
import openai
import orjson
import pytest

from providers.simulator import VOCABULARY

USER = [{"role": "user", "content": "Say something nice"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def chat(sim, model: str, *, headers=None, **fields) -> httpx.Response:
    payload = {"model": model, "messages": fields.pop("messages", USER), **fields}
    return httpx.post(f"{sim.openai_base}/chat/completions", json=payload, headers=headers, timeout=10)


def claude(sim, model: str, **fields) -> httpx.Response:
    payload = {"model": model, "max_tokens": fields.pop("max_tokens", 256), "messages": USER, **fields}
    return httpx.post(f"{sim.url}/v1/messages", json=payload, timeout=10)


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) for every event of an SSE body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def openai_chunks(text: str) -> list[dict]:
    datas = [data for _, data in sse(text)]
    assert datas[-1] == "[DONE]"
    return [orjson.loads(data) for data in datas[:-1]]


def chunk_text(chunks: list[dict]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


# OpenAI Chat Completions.


def test_openai_completion_has_the_real_shape(fresh_simulator):
    response = chat(fresh_simulator, "sim-echo")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim-echo"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    tokens = choice["message"]["content"].split(" ")[1:]
    assert len(tokens) == 12 and all(" " + token in VOCABULARY for token in tokens)
    # "Say something nice": 3 words + 3 for the message.
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18}


def test_openai_stream_sends_role_tokens_finish_usage_and_done(fresh_simulator):
    model = "sim-echo?tokens=5"
    with httpx.stream(
        "POST",
        f"{fresh_simulator.openai_base}/chat/completions",
        json={"model": model, "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        chunks = openai_chunks(response.read().decode())

    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == model for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    token_chunks = chunks[1:6]
    assert all(chunk["choices"][0]["delta"]["content"] in VOCABULARY for chunk in token_chunks)
    assert chunks[6]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[7]["choices"] == []
    assert chunks[7]["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
    assert len(chunks) == 8
    assert all(chunk["usage"] is None for chunk in chunks[:7])
    assert chunk_text(chunks) == chat(fresh_simulator, model).json()["choices"][0]["message"]["content"]


def test_openai_stream_without_include_usage_has_no_usage(fresh_simulator):
    response = chat(fresh_simulator, "sim-echo?tokens=4", stream=True)

    chunks = openai_chunks(response.text)
    assert len(chunks) == 6  # role, 4 tokens, finish
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_official_openai_sdk_sync(fresh_simulator):
    client = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)

    completion = client.chat.completions.create(model="sim-echo?tokens=7", messages=USER)
    assert completion.usage.completion_tokens == 7
    assert completion.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model="sim-echo?tokens=7", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 7
    assert chunks[-1].usage.prompt_tokens == completion.usage.prompt_tokens


async def test_official_openai_sdk_async(fresh_simulator):
    client = openai.AsyncOpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    try:
        completion = await client.chat.completions.create(model="sim-echo?tokens=6", messages=USER)
        stream = await client.chat.completions.create(model="sim-echo?tokens=6", messages=USER, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    finally:
        await client.close()

    assert len([piece for piece in pieces if piece]) == 6
    assert "".join(pieces) == completion.choices[0].message.content


def test_n_gives_that_many_distinct_choices(fresh_simulator):
    body = chat(fresh_simulator, "sim-echo?tokens=5", n=3).json()

    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    texts = [choice["message"]["content"] for choice in body["choices"]]
    assert len(set(texts)) == 3
    assert body["usage"]["completion_tokens"] == 15


def test_weather_question_with_tools_gets_a_tool_call(fresh_simulator):
    weather = [{"role": "user", "content": "What is the weather in Paris?"}]

    body = chat(fresh_simulator, "sim-echo", messages=weather, tools=[WEATHER_TOOL]).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"location": "Paris"}

    client = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    arguments, names, finish = "", [], None
    for chunk in client.chat.completions.create(model="sim-echo", messages=weather, tools=[WEATHER_TOOL], stream=True):
        delta = chunk.choices[0].delta
        for call_delta in delta.tool_calls or []:
            assert call_delta.index == 0
            arguments += call_delta.function.arguments or ""
            if call_delta.function.name:
                names.append(call_delta.function.name)
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"]
    assert orjson.loads(arguments) == {"location": "Paris"}
    assert finish == "tool_calls"

    plain = chat(fresh_simulator, "sim-echo", tools=[WEATHER_TOOL]).json()
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert plain["choices"][0]["message"]["content"]


# Anthropic Messages.


def test_anthropic_message_has_the_real_shape(fresh_simulator):
    response = claude(fresh_simulator, "sim-claude?tokens=9", system="Be brief please")

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "sim-claude?tokens=9"
    [block] = body["content"]
    assert block["type"] == "text" and len(block["text"].split()) == 9
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    # 3 words + 3 for the message, 3 words + 3 for the system prompt.
    assert body["usage"] == {"input_tokens": 12, "output_tokens": 9}


def test_anthropic_stream_sends_the_full_event_sequence(fresh_simulator):
    response = claude(fresh_simulator, "sim-claude?tokens=4", stream=True)

    assert response.headers["content-type"] == "text/event-stream"
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [orjson.loads(data) for _, data in events]
    assert [payload["type"] for payload in payloads] == names
    message = payloads[0]["message"]
    assert message["content"] == [] and message["stop_reason"] is None
    assert message["usage"] == {"input_tokens": 6, "output_tokens": 1}
    assert payloads[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert all(payload["delta"]["type"] == "text_delta" for payload in payloads[3:7])
    assert payloads[8] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 4},
    }
    text = "".join(payload["delta"]["text"] for payload in payloads[3:7])
    assert text == claude(fresh_simulator, "sim-claude?tokens=4").json()["content"][0]["text"]


def test_official_anthropic_sdk(fresh_simulator):
    client = anthropic.Anthropic(base_url=fresh_simulator.url, api_key="x", max_retries=0)

    message = client.messages.create(model="sim-claude?tokens=8", max_tokens=100, messages=USER)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 8

    with client.messages.stream(model="sim-claude?tokens=8", max_tokens=100, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 8
    assert "".join(pieces) == message.content[0].text == final.content[0].text
    assert final.usage.output_tokens == 8 and final.stop_reason == "end_turn"


def test_anthropic_tool_use(fresh_simulator):
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}
    weather = [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris today?"}]}]
    client = anthropic.Anthropic(base_url=fresh_simulator.url, api_key="x", max_retries=0)

    message = client.messages.create(model="sim-claude", max_tokens=100, messages=weather, tools=[tool])
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"location": "Paris"}

    with client.messages.stream(model="sim-claude", max_tokens=100, messages=weather, tools=[tool]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"location": "Paris"}


def test_tool_option_picks_the_tool_and_its_arguments(fresh_simulator):
    read = {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}
    weather_tool = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    # A system-role note after the user's turn, as Claude Code sends it, still leaves the user's question last.
    weather = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris today?"}]},
        {"role": "system", "content": "Agent types: none"},
    ]
    args = '{"file_path": "/tmp/forecast.txt"}'
    model = "sim-claude?tool=Read&tool_args=" + quote(args)
    client = anthropic.Anthropic(base_url=fresh_simulator.url, api_key="x", max_retries=0)

    message = client.messages.create(model=model, max_tokens=100, messages=weather, tools=[weather_tool, read])
    [block] = message.content
    assert block.name == "Read" and block.input == {"file_path": "/tmp/forecast.txt"}
    with client.messages.stream(model=model, max_tokens=100, messages=weather, tools=[weather_tool, read]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"file_path": "/tmp/forecast.txt"}

    default = client.messages.create(model="sim-claude", max_tokens=100, messages=weather, tools=[weather_tool, read])
    assert default.content[0].name == "get_weather" and default.content[0].input == {"location": "Paris"}
    not_offered = client.messages.create(model="sim-claude?tool=Bash", max_tokens=100, messages=weather, tools=[read])
    assert not_offered.stop_reason == "end_turn"

    openai_weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    fresh_simulator.configure(tool="get_weather", tool_args={"city": "Lyon"})
    body = chat(fresh_simulator, "sim-echo", messages=openai_weather, tools=[WEATHER_TOOL], stream=True).text
    arguments = "".join(
        call["function"].get("arguments") or ""
        for chunk in openai_chunks(body)
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []
        if chunk["choices"]
    )
    assert orjson.loads(arguments) == {"city": "Lyon"}

    fresh_simulator.clear_config()
    for bad in ("tool_args=%5B1%5D", "tool_args=nope", "tool="):
        response = chat(fresh_simulator, f"sim-echo?{bad}")
        assert response.status_code == 400 and "tool" in response.json()["error"]["message"]


# Determinism, caps, usage and echo.


def test_same_request_gives_the_same_text(fresh_simulator):
    def text(model, messages=USER):
        return chat(fresh_simulator, model, messages=messages).json()["choices"][0]["message"]["content"]

    first = text("sim-echo?tokens=20")
    assert text("sim-echo?tokens=20") == first
    assert text("sim-echo?tokens=5") == " ".join(first.split(" ")[:6])  # options do not change the seed
    assert text("sim-mini?tokens=20") != first
    assert text("sim-echo?tokens=20", [{"role": "user", "content": "Something else"}]) != first


def test_max_tokens_caps_generation(fresh_simulator):
    capped = chat(fresh_simulator, "sim-echo?tokens=10", max_tokens=4).json()
    assert capped["choices"][0]["finish_reason"] == "length"
    assert len(capped["choices"][0]["message"]["content"].split()) == 4
    assert capped["usage"]["completion_tokens"] == 4

    newer = chat(fresh_simulator, "sim-echo?tokens=10", max_completion_tokens=3).json()
    assert newer["choices"][0]["finish_reason"] == "length" and newer["usage"]["completion_tokens"] == 3

    roomy = chat(fresh_simulator, "sim-echo?tokens=10", max_tokens=50).json()
    assert roomy["choices"][0]["finish_reason"] == "stop" and roomy["usage"]["completion_tokens"] == 10

    chunks = openai_chunks(chat(fresh_simulator, "sim-echo?tokens=10", max_tokens=2, stream=True).text)
    assert len(chunk_text(chunks).split()) == 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    message = claude(fresh_simulator, "sim-claude?tokens=10", max_tokens=4).json()
    assert message["stop_reason"] == "max_tokens" and message["usage"]["output_tokens"] == 4
    events = [
        orjson.loads(data) for _, data in sse(claude(fresh_simulator, "sim-claude", max_tokens=3, stream=True).text)
    ]
    assert [event["delta"]["stop_reason"] for event in events if event["type"] == "message_delta"] == ["max_tokens"]
    assert sum(event["type"] == "content_block_delta" for event in events) == 3


def test_no_usage_leaves_usage_out(fresh_simulator):
    body = chat(fresh_simulator, "sim-echo?no_usage=1").json()
    assert "usage" not in body and body["choices"][0]["message"]["content"]

    chunks = openai_chunks(
        chat(fresh_simulator, "sim-echo?no_usage=1&tokens=3", stream=True, stream_options={"include_usage": True}).text
    )
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)

    assert "usage" not in claude(fresh_simulator, "sim-claude?no_usage=1").json()
    events = [orjson.loads(data) for _, data in sse(claude(fresh_simulator, "sim-claude?no_usage=1", stream=True).text)]
    assert "usage" not in events[0]["message"]
    assert all("usage" not in event for event in events)


def test_echo_answers_with_the_last_user_message(fresh_simulator):
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "repeat these four words"}]},
    ]
    body = chat(fresh_simulator, "sim-echo?echo=1", messages=messages).json()
    assert body["choices"][0]["message"]["content"] == "repeat these four words"
    assert body["usage"]["completion_tokens"] == 4

    chunks = openai_chunks(chat(fresh_simulator, "sim-echo?echo=1", messages=messages, stream=True).text)
    assert [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:5]] == [
        "repeat",
        " these",
        " four",
        " words",
    ]

    message = claude(fresh_simulator, "sim-claude?echo=1").json()
    assert message["content"][0]["text"] == "Say something nice"


# Pacing.


async def test_interval_spaces_token_events(fresh_simulator):
    model = "sim-echo?tokens=20&interval_ms=100"
    arrivals = []
    async with httpx.AsyncClient(timeout=10) as client:
        payload = {"model": model, "messages": USER, "stream": True}
        async with client.stream("POST", f"{fresh_simulator.openai_base}/chat/completions", json=payload) as response:
            async for raw in response.aiter_raw():
                if b'"content":" ' in raw:
                    arrivals.append(time.monotonic())

    assert 18 <= len(arrivals) <= 20  # one read per token event, give or take a coalesced pair
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert 0.06 <= statistics.median(gaps) <= 0.2
    assert 1.7 <= arrivals[-1] - arrivals[0] <= 3.5
    [record] = fresh_simulator.requests(model=model)
    assert record["tokens_sent"] == 20 and record["status"] == 200 and not record["disconnected"]


def test_ttft_delays_the_first_body_byte(fresh_simulator):
    payload = {"model": "sim-echo?tokens=2&ttft_ms=300", "messages": USER, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{fresh_simulator.openai_base}/chat/completions", json=payload, timeout=10) as response:
        headers_at = time.monotonic() - started
        raw = response.iter_raw()
        body = next(raw)
        first_at = time.monotonic() - started
        body += b"".join(raw)
    assert headers_at < 0.25  # a stream's headers go out at once; the body waits for the first token
    assert 0.28 <= first_at < 1.5
    assert len(openai_chunks(body.decode())) == 4

    started = time.monotonic()
    assert chat(fresh_simulator, "sim-echo?ttft_ms=300").status_code == 200
    assert 0.28 <= time.monotonic() - started < 1.5


# Injected failures.


def test_fail_answers_with_the_status_in_the_dialect_shape(fresh_simulator):
    response = chat(fresh_simulator, "sim-echo?fail=500")
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"

    limited = chat(fresh_simulator, "sim-echo?fail=429")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    client = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="sim-echo?fail=429", messages=USER)

    overloaded = claude(fresh_simulator, "sim-claude?fail=529")
    assert overloaded.status_code == 529
    assert overloaded.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": overloaded.json()["error"]["message"]},
    }
    assert claude(fresh_simulator, "sim-claude?fail=500").json()["error"]["type"] == "api_error"


def test_fail_times_fails_only_the_first_requests(fresh_simulator):
    model = "sim-echo?fail=503&fail_times=2"
    assert [chat(fresh_simulator, model).status_code for _ in range(4)] == [503, 503, 200, 200]
    # Another option string has its own counter; reset starts every counter again.
    assert chat(fresh_simulator, "sim-echo?fail_times=1").status_code == 500
    fresh_simulator.reset()
    assert [chat(fresh_simulator, model).status_code for _ in range(3)] == [503, 503, 200]


def test_hang_until_the_client_gives_up_is_seen_as_disconnect(fresh_simulator):
    model = "sim-echo?hang=1"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{fresh_simulator.openai_base}/chat/completions", json={"model": model, "messages": USER}, timeout=0.5
        )
    gave_up_at = time.time()

    [record] = fresh_simulator.wait_for_requests(
        lambda records: records and records[0]["disconnected"], timeout=1.0, model=model
    )
    assert record["disconnected_at"] - gave_up_at < 1.0
    assert record["status"] is None and record["first_byte_at"] is None


def test_client_abort_mid_stream_is_seen_within_a_second(fresh_simulator):
    model = "sim-echo?tokens=50&interval_ms=100"
    payload = {"model": model, "messages": USER, "stream": True}
    with httpx.stream("POST", f"{fresh_simulator.openai_base}/chat/completions", json=payload, timeout=10) as response:
        seen = 0
        for line in response.iter_lines():
            seen += '"content":" ' in line
            if seen == 3:
                break
    closed_at = time.time()

    [record] = fresh_simulator.wait_for_requests(lambda records: records[0]["disconnected"], timeout=1.0, model=model)
    assert record["disconnected_at"] - closed_at < 1.0
    assert 3 <= record["tokens_sent"] < 10
    assert record["status"] == 200


def test_drop_after_breaks_the_stream(fresh_simulator):
    payload = {"model": "sim-echo?tokens=10&drop_after=3", "messages": USER, "stream": True}
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST", f"{fresh_simulator.openai_base}/chat/completions", json=payload, timeout=5
        ) as response:
            assert response.status_code == 200
            lines.extend(response.iter_lines())
    datas = [line for line in lines if line.startswith("data: ")]
    assert len(datas) == 4  # the role chunk and three tokens
    assert "data: [DONE]" not in lines

    anthropic_payload = {"model": "sim-claude?drop_after=2", "max_tokens": 100, "messages": USER, "stream": True}
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{fresh_simulator.url}/v1/messages", json=anthropic_payload, timeout=5) as response:
            response.read()

    with pytest.raises(httpx.RemoteProtocolError):
        chat(fresh_simulator, "sim-echo?drop_after=0")


def test_malformed_after_sends_one_broken_event_then_continues(fresh_simulator):
    events = sse(chat(fresh_simulator, "sim-echo?tokens=5&malformed_after=2", stream=True).text)
    datas = [data for _, data in events]
    assert datas.count("{not json") == 1
    assert datas.index("{not json") == 3  # role chunk, two tokens, then the broken one
    good = [orjson.loads(data) for data in datas if data not in ("{not json", "[DONE]")]
    assert len(chunk_text(good).split()) == 5
    assert datas[-1] == "[DONE]"

    anthropic_events = sse(claude(fresh_simulator, "sim-claude?tokens=3&malformed_after=1", stream=True).text)
    assert ("content_block_delta", "{not json") in anthropic_events
    assert anthropic_events[-1][0] == "message_stop"


# Auth.


def test_api_key_is_required_when_configured(simulator_factory):
    key = "sk-sim-secret-123"
    sim = simulator_factory(api_key=key)
    url = f"{sim.openai_base}/chat/completions"
    payload = {"model": "sim-echo", "messages": USER}

    missing = httpx.post(url, json=payload)
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(url, json=payload, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json=payload, headers={"authorization": f"Bearer {key}"}).status_code == 200

    messages = f"{sim.url}/v1/messages"
    body = {**payload, "max_tokens": 10}
    denied = httpx.post(messages, json=body)
    assert denied.status_code == 401
    assert denied.json()["type"] == "error" and denied.json()["error"]["type"] == "authentication_error"
    assert httpx.post(messages, json=body, headers={"x-api-key": key}).status_code == 200

    models = f"{sim.url}/v1/models"
    assert httpx.get(models).status_code == 401
    assert httpx.get(models, headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"}).json()["type"] == "error"
    assert httpx.get(models, headers={"x-api-key": key}).status_code == 200
    assert httpx.get(models, headers={"authorization": f"Bearer {key}"}).status_code == 200

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=sim.openai_base, api_key="wrong", max_retries=0).models.list()
    assert openai.OpenAI(base_url=sim.openai_base, api_key=key, max_retries=0).models.list().data
    client = anthropic.Anthropic(base_url=sim.url, api_key=key, max_retries=0)
    assert client.messages.create(model="sim-claude", max_tokens=5, messages=USER).usage.output_tokens == 5

    records = sim.requests()
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert [record["status"] for record in records] == [401, 401, 200, 401, 200, 401, 401, 200, 200, 401, 200, 200]
    assert [record["auth_present"] for record in records][:3] == [False, True, True]
    assert records[2]["auth_sha256"] == digest and records[1]["auth_sha256"] != digest
    assert records[2]["headers"]["authorization"] == "***" and records[4]["headers"]["x-api-key"] == "***"
    assert key not in orjson.dumps(records).decode()


# Bad requests.


def test_bad_requests_get_400_in_the_dialect_shape(fresh_simulator):
    broken = httpx.post(f"{fresh_simulator.openai_base}/chat/completions", content=b"{nope", timeout=5)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"

    no_messages = httpx.post(f"{fresh_simulator.openai_base}/chat/completions", json={"model": "sim-echo"}, timeout=5)
    assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]["message"]

    anthropic_broken = httpx.post(f"{fresh_simulator.url}/v1/messages", content=b"[1,", timeout=5)
    assert anthropic_broken.status_code == 400
    assert anthropic_broken.json()["error"]["type"] == "invalid_request_error"
    assert anthropic_broken.json()["type"] == "error"

    no_max_tokens = httpx.post(f"{fresh_simulator.url}/v1/messages", json={"model": "sim-claude", "messages": USER})
    assert no_max_tokens.status_code == 400 and "max_tokens" in no_max_tokens.json()["error"]["message"]

    unknown_option = chat(fresh_simulator, "sim-echo?tokenz=3")
    assert unknown_option.status_code == 400 and "tokenz" in unknown_option.json()["error"]["message"]


# Models and the control API.


def test_models_list(fresh_simulator):
    body = httpx.get(f"{fresh_simulator.openai_base}/models").json()
    assert body["object"] == "list"
    ids = [model["id"] for model in body["data"]]
    assert "sim-echo" in ids and len(ids) >= 3
    assert all(model["object"] == "model" and model["owned_by"] == "simulator" for model in body["data"])
    assert [model.id for model in anthropic.Anthropic(base_url=fresh_simulator.url, api_key="x").models.list()] == ids


def test_global_config_overrides_and_fails_every_endpoint(fresh_simulator):
    tokens = chat(fresh_simulator, "sim-echo?tokens=3", headers={"x-sim-options": "tokens=5"}).json()
    assert tokens["usage"]["completion_tokens"] == 5

    assert fresh_simulator.configure(fail=503) == {"fail": 503}
    assert fresh_simulator.config() == {"fail": 503}
    assert httpx.get(f"{fresh_simulator.openai_base}/models").status_code == 503
    assert chat(fresh_simulator, "sim-echo").status_code == 503
    assert claude(fresh_simulator, "sim-claude").json()["error"]["type"] == "overloaded_error"

    fresh_simulator.configure(tokens=7)
    assert (
        chat(fresh_simulator, "sim-echo?tokens=3", headers={"x-sim-options": "tokens=5"}).json()["usage"][
            "completion_tokens"
        ]
        == 7
    )

    fresh_simulator.configure(fail=500, fail_times=1)
    assert [httpx.get(f"{fresh_simulator.openai_base}/models").status_code for _ in range(2)] == [500, 200]

    fresh_simulator.clear_config()
    assert fresh_simulator.config() == {}
    assert httpx.get(f"{fresh_simulator.openai_base}/models").status_code == 200
    with pytest.raises(httpx.HTTPStatusError):
        fresh_simulator.configure(bogus=1)


def test_request_log_and_filters(fresh_simulator):
    chat(fresh_simulator, "sim-echo?tokens=2")
    chat(fresh_simulator, "sim-mini", stream=True)
    claude(fresh_simulator, "sim-claude")

    records = fresh_simulator.requests()
    assert [record["model"] for record in records] == ["sim-echo?tokens=2", "sim-mini", "sim-claude"]
    first, second, third = records
    assert first["body"] == {"model": "sim-echo?tokens=2", "messages": USER}
    assert first["method"] == "POST" and first["status"] == 200 and first["stream"] is False
    assert first["options"] == {"tokens": 2}
    assert first["started_at"] <= first["first_byte_at"] <= first["finished_at"]
    assert second["stream"] is True and second["events_sent"] == 15 and second["tokens_sent"] == 12
    assert third["headers"]["content-type"] == "application/json"

    assert [record["id"] for record in fresh_simulator.requests(model="sim-mini")] == [second["id"]]
    assert fresh_simulator.requests(model="sim-echo") == []
    assert [record["model"] for record in fresh_simulator.requests(path="/v1/messages")] == ["sim-claude"]
    assert [record["id"] for record in fresh_simulator.requests(since_id=first["id"])] == [second["id"], third["id"]]

    fresh_simulator.reset()
    assert fresh_simulator.requests() == []
    assert httpx.get(f"{fresh_simulator.url}/_sim/health").json() == {"ok": True}


RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["function"]["parameters"]}


def responses(sim, model: str, **fields) -> httpx.Response:
    payload = {"model": model, "input": fields.pop("input", "Say something nice"), **fields}
    return httpx.post(f"{sim.openai_base}/responses", json=payload, timeout=10)


def test_responses_answer_like_chat_with_the_same_text(fresh_simulator):
    body = responses(fresh_simulator, "sim-echo?reasoning=2&cached=1", instructions="Be brief").json()
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "completed"
    reasoning, message = body["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": " step1 step2"}]
    assert message["type"] == "message" and message["content"][0]["type"] == "output_text"
    chat_answer = chat(fresh_simulator, "sim-echo", messages=[{"role": "user", "content": "Say something nice"}]).json()
    plain = responses(fresh_simulator, "sim-echo").json()
    assert plain["output"][0]["content"][0]["text"] == chat_answer["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["output_tokens"] == 14 and usage["output_tokens_details"] == {"reasoning_tokens": 2}
    assert usage["input_tokens_details"] == {"cached_tokens": 1}
    assert usage["total_tokens"] == usage["input_tokens"] + 14

    capped = responses(fresh_simulator, "sim-echo", max_output_tokens=3).json()
    assert capped["status"] == "incomplete" and capped["incomplete_details"] == {"reason": "max_output_tokens"}
    assert len(capped["output"][0]["content"][0]["text"].split()) == 3


def test_responses_stream_with_the_official_sdk(fresh_simulator):
    client = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    with client.responses.stream(model="sim-echo?tokens=5", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 5 and "".join(deltas) == final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage.output_tokens == 5 and events[0].response.id == final.id


def test_responses_weather_question_gets_a_function_call_and_the_output_ends_it(fresh_simulator):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    call = responses(fresh_simulator, "sim-echo", input=question, tools=[RESPONSES_TOOL]).json()["output"][0]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert orjson.loads(call["arguments"]) == {"location": "Paris"} and call["call_id"].startswith("call_")
    follow_up = [
        *question,
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny"},
    ]
    answer = responses(fresh_simulator, "sim-echo", input=follow_up, tools=[RESPONSES_TOOL]).json()
    assert answer["output"][0]["type"] == "message"
    streamed = responses(fresh_simulator, "sim-echo", input=question, tools=[RESPONSES_TOOL], stream=True)
    names = [name for name, _ in sse(streamed.text)]
    assert names.count("response.function_call_arguments.delta") == 5 and names[-1] == "response.completed"


def test_responses_faults(fresh_simulator):
    failed = responses(fresh_simulator, "sim-echo?fail=503")
    assert failed.status_code == 503 and failed.json()["error"]["type"] == "server_error"
    assert responses(fresh_simulator, "sim-echo", input=[]).status_code == 400
    with pytest.raises(httpx.RemoteProtocolError):
        responses(fresh_simulator, "sim-echo?drop_after=2", stream=True)
