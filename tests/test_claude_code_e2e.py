"""The Claude Code CLI, unmodified, through the gateway to both kinds of deployment.

Claude Code talks the Anthropic Messages API (`POST /v1/messages?beta=true`, streaming, with
`anthropic-version` and `anthropic-beta` headers). An Anthropic-dialect deployment gets its body as is,
an OpenAI-dialect one a translation. The simulator is deterministic, so each answer is computed from
the request the simulator received.

The replay fixture is the second request of the tool round trip below (the one carrying the
tool_result), captured with Claude Code pointed straight at the simulator; paths and ids were replaced
with neutral values.
"""

import json
from pathlib import Path

import httpx
import orjson
import pytest

from providers.simulator import completion_plan
from tests.support.claude_code import ClaudeCodeRun, claude_code_install, claude_code_run
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURE = Path(__file__).parent / "fixtures" / "claude_code_messages_request.json"
DIALECTS = ["anthropic", "openai"]
UPSTREAM = {"anthropic": ("sim-claude", "/v1/messages"), "openai": ("sim-echo", "/v1/chat/completions")}
# The headers Claude Code sends with every Messages request (version 2.1.x), besides the key.
CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": (
        "claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
        "context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
        "effort-2025-11-24"
    ),
    "anthropic-dangerous-direct-browser-access": "true",
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
    "x-app": "cli",
    "content-type": "application/json",
    "accept": "application/json",
}
WEATHER_PROMPT = "What is the weather in Paris? The forecast is in forecast.txt."
FORECAST = "Sunny and 21 degrees."


@pytest.fixture(scope="module")
def claude_cli() -> Path:
    # Installed once up front, so a failing npm install fails here rather than inside a timed run.
    return claude_code_install()


def deployment_create(dialect: str, simulator, upstream_model: str) -> str:
    """A public gateway model with one deployment on a simulator provider of `dialect`; its name."""
    base = simulator.anthropic_base if dialect == "anthropic" else simulator.openai_base
    provider = provider_create(f"{dialect}-sim", base, dialect=dialect)
    name = f"claude-code-{dialect}"
    model_create(name, [(provider, upstream_model, 0)])
    return name


def simulated_text(record: dict) -> str:
    """The text the simulator wrote for a logged request that got a text answer."""
    body = record["body"]
    anthropic_dialect = record["path"] == "/v1/messages"
    cap = body.get("max_tokens") if anthropic_dialect else body.get("max_completion_tokens", body.get("max_tokens"))
    plan = completion_plan(
        model=body["model"],
        messages=body["messages"],
        system=body.get("system") if anthropic_dialect else None,
        options=record["options"],
        cap=cap,
        n=1,
        tool_name=None,
    )
    return "".join(plan.choices[0])


def succeeded(run: ClaudeCodeRun) -> dict:
    assert run.returncode == 0 and run.result is not None, run.describe()
    assert run.result["is_error"] is False, run.describe()
    assert run.result["subtype"] == "success", run.describe()
    return run.result


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events


@pytest.mark.parametrize("dialect", DIALECTS)
def test_print_mode_answers_through_the_gateway(claude_cli, gateway, fresh_simulator, dialect):
    upstream, path = UPSTREAM[dialect]
    model = deployment_create(dialect, fresh_simulator, f"{upstream}?echo=1")
    prompt = "Say hello to the gateway"

    run = claude_code_run(prompt, base_url=gateway.url, api_key=key_create("free"), model=model)

    result = succeeded(run)
    [sent] = fresh_simulator.requests(path=path)
    assert sent["model"] == f"{upstream}?echo=1" and sent["stream"] is True
    # The simulator echoes the last user message: Claude Code puts context reminders before the prompt.
    assert result["result"] == simulated_text(sent), run.describe()
    assert result["result"].endswith(prompt)
    assert result["num_turns"] == 1
    if dialect == "anthropic":
        assert sent["query"] == "beta=true"
        assert sent["headers"]["anthropic-version"] == CLAUDE_CODE_HEADERS["anthropic-version"]
        assert "claude-code-20250219" in sent["headers"]["anthropic-beta"].split(",")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_tool_round_trip(claude_cli, gateway, fresh_simulator, tmp_path, dialect):
    upstream, path = UPSTREAM[dialect]
    model = deployment_create(dialect, fresh_simulator, upstream)
    project = tmp_path / "project"
    project.mkdir()
    forecast = project / "forecast.txt"
    forecast.write_text(FORECAST + "\n")
    # Read is harmless and allowed in print mode without a permission prompt.
    fresh_simulator.configure(tool="Read", tool_args={"file_path": str(forecast)})

    run = claude_code_run(WEATHER_PROMPT, base_url=gateway.url, api_key=key_create("free"), model=model, cwd=project)

    result = succeeded(run)
    assert result["num_turns"] == 2, run.describe()
    first, second = fresh_simulator.requests(path=path)
    assert first["body"]["tools"] and second["body"]["tools"]
    if dialect == "anthropic":
        assert "Read" in [tool["name"] for tool in first["body"]["tools"]]
        *_, call, answer = second["body"]["messages"]
        [tool_use] = call["content"]
        assert call["role"] == "assistant" and tool_use["type"] == "tool_use"
        assert tool_use["name"] == "Read" and tool_use["input"] == {"file_path": str(forecast)}
        [tool_result] = answer["content"]
        assert answer["role"] == "user" and tool_result["type"] == "tool_result"
        assert tool_result["tool_use_id"] == tool_use["id"] and tool_use["id"].startswith("toolu_")
        assert FORECAST in tool_result["content"]
    else:
        assert "Read" in [tool["function"]["name"] for tool in first["body"]["tools"]]
        messages = second["body"]["messages"]
        [index] = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        [tool_call] = messages[index]["tool_calls"]
        assert tool_call["function"]["name"] == "Read"
        assert json.loads(tool_call["function"]["arguments"]) == {"file_path": str(forecast)}
        # Claude Code answers the call it was given; the result names the same call upstream.
        assert tool_call["id"]
        [tool_message] = [message for message in messages[index + 1 :] if message["role"] == "tool"]
        assert tool_message["tool_call_id"] == tool_call["id"]
        assert FORECAST in json.dumps(tool_message["content"])
    assert result["result"].strip() == simulated_text(second).strip(), run.describe()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_replayed_claude_code_request(gateway, fresh_simulator, dialect):
    upstream, path = UPSTREAM[dialect]
    model = deployment_create(dialect, fresh_simulator, upstream)
    captured = json.loads(FIXTURE.read_text())
    body = {**captured, "model": model}
    headers = {**CLAUDE_CODE_HEADERS, "x-api-key": key_create("free")}

    response = httpx.post(
        gateway.url + "/v1/messages?beta=true", content=orjson.dumps(body), headers=headers, timeout=30
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert events[0][1]["message"]["model"] == model
    text = "".join(p["delta"]["text"] for name, p in events if name == "content_block_delta")
    stop = [p["delta"]["stop_reason"] for name, p in events if name == "message_delta"]
    assert stop == ["end_turn"]
    [sent] = fresh_simulator.requests(path=path)
    assert text == simulated_text(sent)
    if dialect == "anthropic":
        assert sent["body"] == {**captured, "model": upstream}
        assert sent["query"] == "beta=true"
        for name in ("anthropic-version", "anthropic-beta"):
            assert sent["headers"][name] == CLAUDE_CODE_HEADERS[name]
    else:
        translated = sent["body"]
        assert translated["model"] == upstream and translated["stream"] is True
        assert len(translated["tools"]) == len(captured["tools"])
        roles = [message["role"] for message in translated["messages"]]
        assert roles[0] == "system" and "tool" in roles and "assistant" in roles


@pytest.mark.parametrize("dialect", DIALECTS)
def test_default_model_names_through_an_alias(claude_cli, gateway, fresh_simulator, dialect):
    """No ANTHROPIC_MODEL: Claude Code asks for its own model names, and an alias catches them."""
    upstream, path = UPSTREAM[dialect]
    base = fresh_simulator.anthropic_base if dialect == "anthropic" else fresh_simulator.openai_base
    provider = provider_create(f"{dialect}-sim", base, dialect=dialect)
    model_create("house-model", [(provider, f"{upstream}?echo=1", 0)], aliases=["claude-*"])
    prompt = "Say hello through the alias"

    run = claude_code_run(prompt, base_url=gateway.url, api_key=key_create("free"), model=None)

    result = succeeded(run)
    sent = fresh_simulator.requests(path=path)
    assert sent and all(record["model"] == f"{upstream}?echo=1" for record in sent)
    assert result["result"] == simulated_text(sent[-1]), run.describe()
    events = wait_usage(lambda evs: len(evs) == len(sent))
    assert all(e["model"] == "house-model" and e["requested_model"].startswith("claude-") for e in events)
    assert {e["route"] for e in events} == {"alias:claude-*"}
