"""The Claude Code CLI, unmodified, on OpenAI-dialect providers whose tool-call ids are not Anthropic's: it gets
`toolu_` ids it can use, and the provider gets its own id back with the tool's result."""

from pathlib import Path

import pytest

from tests.support.claude_code import claude_code_install, claude_code_run
from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "What is the weather in Paris? The forecast is in forecast.txt."
FORECAST = "Sunny and 21 degrees."


@pytest.fixture(scope="module")
def claude_cli() -> Path:
    return claude_code_install()


# vLLM's and Kimi's style (`.` and `:`), a Gemini-compatible server's (`|`), and OpenAI's own.
@pytest.mark.parametrize("provider_id", ["functions.Read:0", "call_0|read", "call_5f1e2d3c4b"])
def test_a_tool_round_trip_returns_the_providers_own_id(claude_cli, gateway, fresh_simulator, tmp_path, provider_id):
    provider = provider_create("openai-sim", fresh_simulator.openai_base)
    model_create("claude-code-openai", [(provider, "sim-echo", 0)])
    forecast = tmp_path / "forecast.txt"
    forecast.write_text(FORECAST + "\n")
    fresh_simulator.configure(tool="Read", tool_args={"file_path": str(forecast)}, tool_id=provider_id)

    run = claude_code_run(
        PROMPT, base_url=gateway.url, api_key=key_create("free"), model="claude-code-openai", cwd=tmp_path
    )

    assert run.returncode == 0 and run.result is not None and run.result["is_error"] is False, run.describe()
    assert run.result["num_turns"] == 2, run.describe()
    first, second = fresh_simulator.requests(path="/v1/chat/completions")
    messages = second["body"]["messages"]
    [call] = [message for message in messages if message["role"] == "assistant" and message.get("tool_calls")]
    [result] = [message for message in messages if message["role"] == "tool"]
    assert call["tool_calls"][0]["id"] == result["tool_call_id"] == provider_id
    assert FORECAST in str(result["content"])
