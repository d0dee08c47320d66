"""Tool-call ids across a translation, end to end: a client of each format gets the provider's tool call with an
id in its own format, sends the result back under that id, and the provider gets its own id back, whatever
it looked like (the simulator writes the id it is told to). Real gateway process -> simulator, over loopback."""

import re

import httpx
import orjson
import pytest

from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = "What is the weather in Paris?"
PARAMETERS = {"type": "object", "properties": {"location": {"type": "string"}}}
ANTHROPIC_ID = re.compile(r"toolu_[A-Za-z0-9_-]+")
# public model -> (provider dialect, path the simulator is asked on)
SERVED = {
    "chat": ("openai", "/v1/chat/completions"),
    "claude": ("anthropic", "/v1/messages"),
    "resp": ("responses", "/v1/responses"),
}
# Ids providers write: OpenAI's and Anthropic's own, Gemini-compatible (`|`), vLLM/Kimi (`.`, `:`), bare.
OPENAI_STYLE_IDS = ["call_9f8e7d6c5b4a3", "call_0|abc", "functions.get_weather:0", "abc123"]
ANTHROPIC_STYLE_IDS = ["toolu_01A09q90qw90lq917835lq9", "functions.get_weather:0", "call_00_abc"]
# (client format, model) -> the ids its provider writes
PAIRS = {
    ("anthropic", "chat"): OPENAI_STYLE_IDS,
    ("anthropic", "resp"): OPENAI_STYLE_IDS[:3],
    ("openai", "claude"): ANTHROPIC_STYLE_IDS,
    ("openai", "resp"): OPENAI_STYLE_IDS[1:3],
    ("responses", "chat"): OPENAI_STYLE_IDS,
    ("responses", "claude"): ANTHROPIC_STYLE_IDS,
}
CASES = [(client, model, provider_id) for (client, model), ids in PAIRS.items() for provider_id in ids]


@pytest.fixture
def key(fresh_simulator):
    chat = provider_create("sim-chat", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    responses = provider_create("sim-responses", fresh_simulator.openai_base, dialect="responses")
    model_create("chat", [(chat, "sim-echo", 0)])
    model_create("claude", [(claude, "sim-claude", 0)])
    model_create("resp", [(responses, "sim-echo", 0)])
    return key_create("free")


def sse_payloads(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line[6:] != "[DONE]"]


def post(gateway, key: str, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01"}
    response = httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def anthropic_round_trip(gateway, key: str, model: str, stream: bool) -> str:
    tools = [{"name": "get_weather", "description": "Current weather", "input_schema": PARAMETERS}]
    question = [{"role": "user", "content": WEATHER}]
    body = {"model": model, "max_tokens": 100, "messages": question, "tools": tools, "stream": stream}
    response = post(gateway, key, "/v1/messages", body)
    if stream:
        starts = [e["content_block"] for e in sse_payloads(response.text) if e["type"] == "content_block_start"]
        [call] = [block for block in starts if block["type"] == "tool_use"]
    else:
        [call] = response.json()["content"]
    assert call["type"] == "tool_use" and call["name"] == "get_weather"
    follow_up = [
        *question,
        {"role": "assistant", "content": [{**call, "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "18C"}]},
    ]
    post(gateway, key, "/v1/messages", {**body, "messages": follow_up, "stream": False})
    return call["id"]


def openai_round_trip(gateway, key: str, model: str, stream: bool) -> str:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}]
    question = [{"role": "user", "content": WEATHER}]
    body = {"model": model, "messages": question, "tools": tools, "stream": stream}
    response = post(gateway, key, "/v1/chat/completions", body)
    if stream:
        deltas = [c["choices"][0]["delta"] for c in sse_payloads(response.text) if c.get("choices")]
        [call_id] = [call["id"] for delta in deltas for call in delta.get("tool_calls") or () if call.get("id")]
    else:
        [call] = response.json()["choices"][0]["message"]["tool_calls"]
        call_id = call["id"]
    follow_up = [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18C"},
    ]
    post(gateway, key, "/v1/chat/completions", {**body, "messages": follow_up, "stream": False})
    return call_id


def responses_round_trip(gateway, key: str, model: str, stream: bool) -> str:
    tools = [{"type": "function", "name": "get_weather", "parameters": PARAMETERS}]
    body = {"model": model, "input": WEATHER, "tools": tools, "stream": stream}
    response = post(gateway, key, "/v1/responses", body)
    if stream:
        events = sse_payloads(response.text)
        added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
        [completed] = [e["response"] for e in events if e["type"] == "response.completed"]
        [call] = [item for item in added if item["type"] == "function_call"]
        assert [item["call_id"] for item in completed["output"] if item["type"] == "function_call"] == [call["call_id"]]
    else:
        [call] = [item for item in response.json()["output"] if item["type"] == "function_call"]
    follow_up = [
        {"type": "message", "role": "user", "content": WEATHER},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "18C"},
    ]
    post(gateway, key, "/v1/responses", {**body, "input": follow_up, "stream": False})
    return call["call_id"]


ROUND_TRIPS = {"anthropic": anthropic_round_trip, "openai": openai_round_trip, "responses": responses_round_trip}


def ids_the_provider_got_back(dialect: str, body: dict) -> list[str]:
    """The ids of the tool call and of its result in the request that carried the result."""
    if dialect == "openai":
        [assistant] = [m for m in body["messages"] if m.get("tool_calls")]
        [result] = [m for m in body["messages"] if m["role"] == "tool"]
        return [assistant["tool_calls"][0]["id"], result["tool_call_id"]]
    if dialect == "anthropic":
        blocks = [block for m in body["messages"] if isinstance(m["content"], list) for block in m["content"]]
        return [b["id"] for b in blocks if b["type"] == "tool_use"] + [
            b["tool_use_id"] for b in blocks if b["type"] == "tool_result"
        ]
    items = body["input"]
    return [i["call_id"] for i in items if i.get("type") == "function_call"] + [
        i["call_id"] for i in items if i.get("type") == "function_call_output"
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("client", "model", "provider_id"), CASES)
def test_the_client_sees_its_format_and_the_provider_gets_its_own_id_back(
    gateway, key, fresh_simulator, client, model, provider_id, stream
):
    dialect, path = SERVED[model]
    fresh_simulator.configure(tool_id=provider_id)

    shown = ROUND_TRIPS[client](gateway, key, model, stream)

    if client == "anthropic":
        assert ANTHROPIC_ID.fullmatch(shown), shown
    else:
        assert shown.startswith("call_"), shown
    first, second = fresh_simulator.requests(path=path)
    assert "tools" in first["body"]
    assert ids_the_provider_got_back(dialect, second["body"]) == [provider_id, provider_id]


def test_an_id_of_the_other_family_is_carried_whole_and_reads_plainly(gateway, key, fresh_simulator):
    fresh_simulator.configure(tool_id="call_9f8e7d6c5b4a3")
    assert anthropic_round_trip(gateway, key, "chat", stream=True) == "toolu_call_9f8e7d6c5b4a3"
    fresh_simulator.configure(tool_id="toolu_01A09q90qw90lq917835lq9")
    assert openai_round_trip(gateway, key, "claude", stream=False) == "call_toolu_01A09q90qw90lq917835lq9"
    # Between the two OpenAI formats an id goes as it is.
    fresh_simulator.configure(tool_id="call_9f8e7d6c5b4a3")
    assert responses_round_trip(gateway, key, "chat", stream=True) == "call_9f8e7d6c5b4a3"


def test_a_foreign_id_a_client_sends_reaches_an_anthropic_provider_in_a_form_it_accepts(gateway, key, fresh_simulator):
    # An OpenAI client's history from elsewhere (a vLLM deployment it used directly): ids Anthropic refuses.
    call_id = "functions.get_weather:7"
    follow_up = [
        {"role": "user", "content": WEATHER},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18C"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}]

    post(gateway, key, "/v1/chat/completions", {"model": "claude", "messages": follow_up, "tools": tools})

    [sent] = fresh_simulator.requests(path="/v1/messages")
    call, result = ids_the_provider_got_back("anthropic", sent["body"])
    assert call == result and re.fullmatch(r"[A-Za-z0-9_-]+", call), call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("dialect", ["openai", "anthropic", "responses"])
def test_the_simulator_writes_the_tool_call_id_it_is_told(fresh_simulator, dialect, stream):
    path = next(served_path for served, served_path in SERVED.values() if served == dialect)
    upstream = "sim-claude" if dialect == "anthropic" else "sim-echo"
    if dialect == "openai":
        body = {
            "messages": [{"role": "user", "content": WEATHER}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        }
    elif dialect == "anthropic":
        body = {"messages": [{"role": "user", "content": WEATHER}], "tools": [{"name": "f"}], "max_tokens": 50}
    else:
        body = {"input": WEATHER, "tools": [{"type": "function", "name": "f"}]}
    body = {**body, "model": f"{upstream}?tool_id=functions.f:0", "stream": stream}

    response = httpx.post(fresh_simulator.url + path, json=body, timeout=10)

    assert response.status_code == 200, response.text
    assert '"functions.f:0"' in response.text
