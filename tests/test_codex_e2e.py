"""The Codex CLI, unmodified, through the gateway to the three kinds of deployment.

Codex speaks the Responses API only (`POST /v1/responses`, streamed). Every request it sends carries a
`namespace` tool (its sub-agent tools) and a `web_search` built-in tool besides its function tools. A
`dialect: responses` deployment gets the body as it came; an OpenAI- or Anthropic-dialect one gets a
translation, with the namespaced tools flattened (and named back in the answer) and the built-in tool dropped
(named in x-gateway-dropped-tools).
"""

import re
import shlex
import tomllib
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.codex import codex_config, codex_install, codex_run
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

DIALECTS = ["openai", "anthropic", "responses"]
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "responses": "/v1/responses"}
WEATHER_PROMPT = "What is the weather in Paris? The forecast is in forecast.txt."
FORECAST = "Sunny and 21 degrees."


@pytest.fixture(scope="module")
def codex_cli() -> Path:
    # Installed once up front, so a failing npm install fails here rather than inside a timed run.
    return codex_install()


def deployment_create(dialect: str, simulator, upstream_model: str) -> str:
    """A public gateway model with one deployment on a simulator provider of `dialect`; its name."""
    base = simulator.anthropic_base if dialect == "anthropic" else simulator.openai_base
    provider = provider_create(f"{dialect}-sim", base, dialect=dialect)
    name = f"codex-{dialect}"
    model_create(name, [(provider, upstream_model, 0)])
    return name


def succeeded(run) -> None:
    assert run.returncode == 0, run.describe()
    assert not run.errors, run.describe()
    assert any(event.get("type") == "turn.completed" for event in run.events), run.describe()


def upstream_tools(sent: dict) -> list[str]:
    return [tool.get("name") or tool.get("function", {}).get("name") or tool["type"] for tool in sent["body"]["tools"]]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_exec_answers_through_the_gateway(codex_cli, gateway, fresh_simulator, dialect):
    model = deployment_create(dialect, fresh_simulator, "sim-echo?echo=1")
    prompt = "Say hello to the gateway"

    run = codex_run(prompt, base_url=gateway.openai_base, api_key=key_create("free"), model=model)

    succeeded(run)
    [sent] = fresh_simulator.requests(path=PATHS[dialect])
    assert sent["stream"] is True
    [message] = run.items("agent_message")
    # The simulator echoes the last user message: Codex sends its context before the prompt.
    assert message["text"].endswith(prompt), run.describe()
    names = upstream_tools(sent)
    if dialect == "responses":
        # Passed through: Codex's own tools, namespace and built-in included.
        assert "namespace" in [tool["type"] for tool in sent["body"]["tools"]]
        assert "web_search" in names
    else:
        assert "web_search" not in names
        assert any(name.startswith("multi_agent_v1__") for name in names), names
    [event] = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 200 and event["model"] == model
    assert event["completion_tokens"] > 0
    assert event.get("dropped_tools") == (None if dialect == "responses" else ["web_search"])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_shell_command_and_its_output_go_back(codex_cli, gateway, fresh_simulator, tmp_path, dialect):
    model = deployment_create(dialect, fresh_simulator, "sim-echo")
    project = tmp_path / "project"
    project.mkdir()
    (project / "forecast.txt").write_text(FORECAST + "\n")
    fresh_simulator.configure(tool="exec_command", tool_args={"cmd": "cat forecast.txt"})

    run = codex_run(WEATHER_PROMPT, base_url=gateway.openai_base, api_key=key_create("free"), model=model, cwd=project)

    succeeded(run)
    [command] = run.items("command_execution")
    assert "cat forecast.txt" in command["command"] and FORECAST in command["aggregated_output"], run.describe()
    first, second = fresh_simulator.requests(path=PATHS[dialect])
    assert "exec_command" in upstream_tools(first)
    # The command's output went back to the provider, as a tool result of its own format.
    assert FORECAST in orjson.dumps(second["body"]).decode()
    [message] = run.items("agent_message")
    assert message["text"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_reasoning_is_shown(codex_cli, gateway, fresh_simulator, dialect):
    model = deployment_create(dialect, fresh_simulator, "sim-echo?reasoning=6&tokens=8")

    run = codex_run("Think first, then answer", base_url=gateway.openai_base, api_key=key_create("free"), model=model)

    succeeded(run)
    assert len(fresh_simulator.requests(path=PATHS[dialect])) == 1
    reasoning = run.items("reasoning")
    assert reasoning and all(item["text"].strip() for item in reasoning), run.describe()
    [message] = run.items("agent_message")
    assert message["text"]


FIXTURE = Path(__file__).parent / "fixtures" / "codex_responses_request.json"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_captured_codex_request_replays(gateway, fresh_simulator, dialect):
    """One request Codex 0.171 sent (captured against a plain HTTP server; ids and paths made neutral), as is."""
    captured = orjson.loads(FIXTURE.read_bytes())
    model = deployment_create(dialect, fresh_simulator, "sim-echo")
    body = {**captured["body"], "model": model}
    headers = {**captured["headers"], "authorization": f"Bearer {key_create('free')}"}

    response = httpx.post(f"{gateway.openai_base}/responses", content=orjson.dumps(body), headers=headers, timeout=30)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [orjson.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    [sent] = fresh_simulator.requests(path=PATHS[dialect])
    namespace = next(tool for tool in captured["body"]["tools"] if tool["type"] == "namespace")
    if dialect == "responses":
        assert sent["body"] == {**body, "model": "sim-echo"}
        assert "x-gateway-dropped-tools" not in response.headers
    else:
        assert response.headers["x-gateway-dropped-tools"] == "web_search"
        flat = {f"{namespace['name']}__{tool['name']}" for tool in namespace["tools"]}
        assert flat <= set(upstream_tools(sent))
        # Every function tool Codex offered reaches the provider, once.
        offered = sum(1 for tool in captured["body"]["tools"] if tool["type"] == "function") + len(flat)
        assert len(upstream_tools(sent)) == offered


def readme_codex_section() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("\n## Codex CLI\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_config_and_command_work(codex_cli, gateway, fresh_simulator):
    """The README's config.toml (base URL and model swapped for the test's) and its command, as written."""
    section = readme_codex_section()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)
    [config] = [text for language, text in blocks if language == "toml"]
    [shell] = [text.strip().splitlines() for language, text in blocks if not language]
    settings = tomllib.loads(config)
    provider = settings["model_providers"][settings["model_provider"]]
    assert provider["base_url"] == "http://127.0.0.1:8000/v1" and provider["wire_api"] == "responses"
    exports = dict(line.removeprefix("export ").split("=", 1) for line in shell if line.startswith("export "))
    assert list(exports) == [provider["env_key"]] and exports[provider["env_key"]] == "sk-gw-..."
    [command] = [line for line in shell if line.startswith("codex ")]
    model_create(settings["model"], [(provider_create("sim", fresh_simulator.openai_base), "sim-echo?echo=1", 0)])

    run = codex_run(
        "",
        base_url=gateway.openai_base,
        api_key=key_create("free"),
        model=settings["model"],
        config=config.replace(provider["base_url"], gateway.openai_base),
        args=[*shlex.split(command)[1:]],
    )

    assert run.returncode == 0, run.describe()
    # Not --json: the answer is printed as text, after the simulator's echo of the prompt.
    assert "say hello" in run.stdout, run.describe()
    [sent] = fresh_simulator.requests(path="/v1/chat/completions")
    assert sent["body"]["model"] == "sim-echo?echo=1"
    [event] = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 200 and event["model"] == settings["model"]


METRICS_TOKEN = "metrics-token-for-codex"


def socket_answers(gateway) -> float:
    """Responses the gateway answered over its websocket door (`gateway_http_responses{view=responses_socket}`)."""
    response = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "gateway_http_responses_total" and sample.labels.get("view") == "responses_socket"
    )


@pytest.mark.parametrize("dialect", ["openai", "responses"])
def test_exec_over_the_websocket(codex_cli, gateway_factory, fresh_simulator, tmp_path, dialect):
    """With `supports_websockets = true` Codex opens `ws /v1/responses` first and sends its turns as frames."""
    gateway = gateway_factory(GATEWAY_METRICS_TOKEN=METRICS_TOKEN)
    model = deployment_create(dialect, fresh_simulator, "sim-echo")
    project = tmp_path / "project"
    project.mkdir()
    (project / "forecast.txt").write_text(FORECAST + "\n")
    fresh_simulator.configure(tool="exec_command", tool_args={"cmd": "cat forecast.txt"})
    config = codex_config(base_url=gateway.openai_base, model=model, websockets=True)

    run = codex_run(
        WEATHER_PROMPT,
        base_url=gateway.openai_base,
        api_key=key_create("free"),
        model=model,
        cwd=project,
        config=config,
    )

    succeeded(run)
    [command] = run.items("command_execution")
    assert FORECAST in command["aggregated_output"], run.describe()
    assert len(fresh_simulator.requests(path=PATHS[dialect])) == 2
    # The turns went over the socket (a fallback to HTTP would leave this at 0), the second one continuing the
    # first by its previous_response_id; Codex's warm-up frame (`generate: false`) was answered without a provider.
    eventually(lambda: socket_answers(gateway) >= 2, timeout=5, what="answers over the socket")
    events = wait_usage(lambda events: len(events) == 2)
    assert [event["status_code"] for event in events] == [200, 200]
