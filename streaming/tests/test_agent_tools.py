"""Tools agent clients send that providers reached through a translation do not have: namespaced function
tools (flattened, and named back on the way out) and built-in tools (dropped and named in
x-gateway-dropped-tools, or refused, per model). Real gateway process -> simulator over loopback."""

import httpx
import openai
import orjson
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = "What is the weather in Paris?"
NAMESPACE_TOOL = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "close_agent",
            "description": "Close an agent.",
            "strict": False,
            "parameters": {"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]},
        },
        {
            "type": "function",
            "name": "exec_command",  # the same name as a plain tool: the flat names must still differ
            "parameters": {"type": "object", "properties": {}},
        },
    ],
}
EXEC_TOOL = {
    "type": "function",
    "name": "exec_command",
    "description": "Runs a command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
}
BUILTINS = [{"type": "web_search", "external_web_access": False}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]
# public model -> (provider dialect, upstream model, path the simulator is asked on)
TRANSLATED = {
    "chat": ("openai", "sim-echo", "/v1/chat/completions"),
    "claude": ("anthropic", "sim-claude", "/v1/messages"),
}


@pytest.fixture
def key(fresh_simulator):
    chat = provider_create("sim-chat", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    responses = provider_create("sim-responses", fresh_simulator.openai_base, dialect="responses")
    model_create("chat", [(chat, "sim-echo", 0)])
    model_create("claude", [(claude, "sim-claude", 0)])
    model_create("resp", [(responses, "sim-echo", 0)])
    model_create("chat-strict", [(chat, "sim-echo", 0)], unsupported_tools="refuse")
    return key_create("free")


def post(gateway, key, body: dict, path: str = "/v1/responses", **headers) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **headers}
    return httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=30)


def sse_payloads(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line[6:] != "[DONE]"]


def upstream_tool_names(sent: dict) -> list[str]:
    body = sent["body"]
    return [tool.get("name") or tool["function"]["name"] for tool in body.get("tools", [])]


@pytest.mark.parametrize("model", sorted(TRANSLATED))
@pytest.mark.parametrize("stream", [False, True])
def test_namespaced_tools_are_flattened_and_named_back(gateway, key, fresh_simulator, model, stream):
    _dialect, _upstream, path = TRANSLATED[model]
    fresh_simulator.configure(tool="multi_agent_v1__close_agent", tool_args={"target": "agent-7"})
    body = {"model": model, "input": WEATHER, "tools": [EXEC_TOOL, NAMESPACE_TOOL], "stream": stream}

    response = post(gateway, key, body)

    assert response.status_code == 200, response.text
    [sent] = fresh_simulator.requests(path=path)
    names = upstream_tool_names(sent)
    # The plain tool keeps its name; each namespaced one gets a flat name of its own.
    assert names[0] == "exec_command"
    assert "multi_agent_v1__close_agent" in names and "multi_agent_v1__exec_command" in names
    assert len(set(names)) == 3
    if stream:
        events = sse_payloads(response.text)
        added = next(e["item"] for e in events if e["type"] == "response.output_item.added")
        done = next(e["item"] for e in events if e["type"] == "response.output_item.done")
        final = next(e["response"] for e in events if e["type"] == "response.completed")
        items = [added, done, *final["output"]]
    else:
        items = response.json()["output"]
    for item in items:
        assert item["type"] == "function_call"
        assert (item["namespace"], item["name"]) == ("multi_agent_v1", "close_agent"), item
    assert orjson.loads(items[-1]["arguments"]) == {"target": "agent-7"}
    assert "x-gateway-dropped-tools" not in response.headers


@pytest.mark.parametrize("model", sorted(TRANSLATED))
def test_a_namespaced_call_in_the_history_reaches_the_provider_flat(gateway, key, fresh_simulator, model):
    _dialect, _upstream, path = TRANSLATED[model]
    call_id = "call_ns1"
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "close it"}]},
        {
            "type": "function_call",
            "call_id": call_id,
            "namespace": "multi_agent_v1",
            "name": "close_agent",
            "arguments": '{"target": "agent-7"}',
        },
        {"type": "function_call_output", "call_id": call_id, "output": "closed"},
    ]
    body = {"model": model, "input": history, "tools": [EXEC_TOOL, NAMESPACE_TOOL]}

    response = post(gateway, key, body)

    assert response.status_code == 200, response.text
    [sent] = fresh_simulator.requests(path=path)
    text = orjson.dumps(sent["body"]["messages"]).decode()
    assert '"multi_agent_v1__close_agent"' in text and "closed" in text
    assert '"close_agent"' not in text


def test_a_forced_namespaced_tool_is_forced_under_its_flat_name(gateway, key, fresh_simulator):
    choice = {"type": "function", "namespace": "multi_agent_v1", "name": "close_agent"}
    body = {"model": "chat", "input": "hi", "tools": [NAMESPACE_TOOL], "tool_choice": choice}

    response = post(gateway, key, body)

    assert response.status_code == 200, response.text
    [sent] = fresh_simulator.requests(path="/v1/chat/completions")
    assert sent["body"]["tool_choice"] == {"type": "function", "function": {"name": "multi_agent_v1__close_agent"}}


@pytest.mark.parametrize("model", sorted(TRANSLATED))
def test_builtin_tools_are_dropped_and_named(gateway, key, fresh_simulator, model):
    _dialect, _upstream, path = TRANSLATED[model]
    body = {"model": model, "input": "hi", "tools": [EXEC_TOOL, *BUILTINS], "stream": True}

    response = post(gateway, key, body)

    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-dropped-tools"] == "web_search, file_search"
    assert any(e["type"] == "response.completed" for e in sse_payloads(response.text))
    [sent] = fresh_simulator.requests(path=path)
    assert upstream_tool_names(sent) == ["exec_command"]
    request_id = response.headers["x-request-id"]
    [event] = wait_usage(lambda events: len(events) == 1)
    assert event["request_id"] == request_id and event["status_code"] == 200
    assert event["dropped_tools"] == ["web_search", "file_search"]
    line = next(line for line in gateway.log().splitlines() if request_id in line and "aigateway.requests" in line)
    assert "dropped_tools=web_search,file_search" in line


def test_anthropic_server_tools_are_dropped_for_an_openai_provider(gateway, key, fresh_simulator):
    body = {
        "model": "chat",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
    }

    response = post(gateway, key, body, path="/v1/messages", **{"anthropic-version": "2023-06-01"})

    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-dropped-tools"] == "web_search_20250305"
    [sent] = fresh_simulator.requests(path="/v1/chat/completions")
    assert "tools" not in sent["body"]


def test_refuse_keeps_the_400_and_calls_no_provider(gateway, key, fresh_simulator):
    body = {"model": "chat-strict", "input": "hi", "tools": [EXEC_TOOL, *BUILTINS]}

    response = post(gateway, key, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools[1]" and "'web_search' built-in tool" in error["message"]
    assert fresh_simulator.requests(path="/v1/chat/completions") == []
    [event] = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 400 and "dropped_tools" not in event


def test_a_responses_provider_gets_namespaces_and_builtins_as_sent(gateway, key, fresh_simulator):
    body = {"model": "resp", "input": "hi", "tools": [EXEC_TOOL, NAMESPACE_TOOL, *BUILTINS]}

    response = post(gateway, key, body)

    assert response.status_code == 200, response.text
    assert "x-gateway-dropped-tools" not in response.headers
    [sent] = fresh_simulator.requests(path="/v1/responses")
    assert sent["body"]["tools"] == [EXEC_TOOL, NAMESPACE_TOOL, *BUILTINS]


def test_the_openai_sdk_reads_a_namespaced_call(gateway, key, fresh_simulator):
    fresh_simulator.configure(tool="multi_agent_v1__close_agent", tool_args={"target": "a1"})
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key)

    with client.responses.stream(model="claude", input=WEATHER, tools=[EXEC_TOOL, NAMESPACE_TOOL]) as stream:
        final = stream.get_final_response()

    [call] = final.output
    assert call.type == "function_call" and call.name == "close_agent" and call.namespace == "multi_agent_v1"
    [event] = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 200 and event["model"] == "claude"
