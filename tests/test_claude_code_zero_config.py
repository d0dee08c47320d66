"""Claude Code with nothing but a base URL and a key: the demo (`manage.py seed_demo`) serves the CLI's own
default model names through an alias, and the README's Claude Code section works as written.

Claude Code with no model configured asks for its built-in names: a main model for the conversation and a
"haiku" model for background work and the Explore subagent (ANTHROPIC_DEFAULT_HAIKU_MODEL renames the
latter). An Explore subagent is the background request a one-shot `claude -p` run can be made to send: the
simulator answers the weather question below with a call of the Agent tool.
"""

import re
import shlex
from io import StringIO
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from django.core.management import call_command

from accounts.models import UsageRecord
from accounts.usage import usage_flush
from aigateway.management.commands.seed_demo import demo_config
from providers.config_import import gateway_config_import
from providers.models import Provider
from providers.route_rules import alias_resolve
from providers.routing import route_table_load
from tests.support.claude_code import ClaudeCodeRun, claude_code_install, claude_code_run
from tests.support.data import model_create
from tests.support.usage import wait_usage
from tests.test_claude_code_e2e import simulated_text
from tests.test_readme import code_blocks, section

pytestmark = pytest.mark.django_db(transaction=True)

# The names Claude Code 2.1 asks for with no model configured (the README test checks the installed CLI's).
CLI_MAIN_MODEL = "claude-opus-4-8"
CLI_HAIKU_MODEL = "claude-haiku-4-5-20251001"
# The demo's Anthropic-dialect model, which serves Claude Code's names.
DEMO_CLAUDE_MODEL = "sim-claude"
KEY_LINE_RE = re.compile(r"^API key: +(sk-gw-\S+)$")
MESSAGES = "/v1/messages"
# What the README's commands stand for; the tests put the test gateway's URL and the demo key in their place.
README_BASE_URL = "http://127.0.0.1:8000"
README_KEY_PREFIX = "sk-gw-"
EXPLORE_PROMPT = "What is the weather? Explore the project first."
EXPLORE_CALL = {
    "tool": "Agent",
    "tool_args": {"description": "Look around", "prompt": "Say hi", "subagent_type": "Explore"},
}


@pytest.fixture(scope="module")
def claude_cli() -> Path:
    # Installed once up front, so a failing npm install fails here rather than inside a timed run.
    return claude_code_install()


@pytest.fixture
def demo_key(fresh_simulator, settings, monkeypatch, tmp_path) -> str:
    """`manage.py seed_demo` against the test simulator, as `make run` does; the demo key it prints."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setenv("GATEWAY_SIMULATOR_URL", fresh_simulator.url)
    out = StringIO()
    call_command("seed_demo", stdout=out)
    lines = out.getvalue().splitlines()
    match = KEY_LINE_RE.match(lines[-1])
    assert match, lines
    # What to run is printed with the key: no model settings in it.
    assert f"ANTHROPIC_API_KEY={match.group(1)} claude" in "\n".join(lines), lines
    return match.group(1)


def succeeded(run: ClaudeCodeRun) -> dict:
    assert run.returncode == 0 and run.result is not None, run.describe()
    assert run.result["is_error"] is False and run.result["subtype"] == "success", run.describe()
    return run.result


def usage_records(count: int) -> list[UsageRecord]:
    """The usage records of `count` calls, once the gateway has queued them and the batch writer has run."""
    wait_usage(lambda events: len(events) >= count)
    assert usage_flush(batch_size=1000) == count
    return list(UsageRecord.objects.order_by("created_at", "id"))


def readme_exports() -> list[dict[str, str]]:
    """The variables each shell block of the README's Claude Code section exports, block by block."""
    found = []
    for block in code_blocks(section("Claude Code")):
        words = [shlex.split(line, comments=True) for line in block.splitlines()]
        exports = dict(w[1].split("=", 1) for w in words if len(w) == 2 and w[0] == "export" and "=" in w[1])
        if exports:
            found.append(exports)
    return found


def readme_setup(gateway_url: str, key: str) -> dict[str, str]:
    """The README's first export block with the test gateway's URL and key in place of the examples."""
    exported, *_ = readme_exports()
    assert exported.get("ANTHROPIC_BASE_URL", "").startswith(README_BASE_URL), exported
    assert exported.get("ANTHROPIC_API_KEY", "").startswith(README_KEY_PREFIX), exported
    return {**exported, "ANTHROPIC_BASE_URL": gateway_url, "ANTHROPIC_API_KEY": key}


def test_claude_code_with_only_a_base_url_and_a_key_reaches_the_demo(claude_cli, gateway, fresh_simulator, demo_key):
    run = claude_code_run("hi", base_url=gateway.url, api_key=demo_key, model=None)

    result = succeeded(run)
    sent = fresh_simulator.requests(path=MESSAGES)
    assert sent and all(record["model"] == "sim-echo" for record in sent), sent
    assert result["result"] == simulated_text(sent[-1]), run.describe()
    records = usage_records(len(sent))
    assert {(r.model, r.provider, r.route, r.status_code) for r in records} == {
        (DEMO_CLAUDE_MODEL, "sim-anthropic", "alias:claude-*", 200)
    }
    assert all(r.requested_model.startswith("claude-") and r.api_key.name == "demo" for r in records)


def test_other_claude_models_win_over_the_demo_alias(gateway, fresh_simulator, demo_key):
    """A model named like Claude, and another model's claude-* pattern, are chosen before the demo's alias."""
    provider = Provider.objects.get(name="sim")
    model_create(CLI_MAIN_MODEL, [(provider, "sim-echo", 0)])
    model_create("house-haiku", [(provider, "sim-echo", 0)], aliases=["claude-haiku-*"])
    expected = {
        CLI_MAIN_MODEL: (CLI_MAIN_MODEL, "default"),
        CLI_HAIKU_MODEL: ("house-haiku", "alias:claude-haiku-*"),
        "claude-sonnet-4-6": (DEMO_CLAUDE_MODEL, "alias:claude-*"),
    }

    served = {}
    for name in expected:
        response = httpx.post(
            gateway.url + MESSAGES,
            content=orjson.dumps({"model": name, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
            headers={"x-api-key": demo_key, "anthropic-version": "2023-06-01", "content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        served[name] = (response.headers["x-gateway-model"], response.headers["x-gateway-route"].split(";")[0])

    assert served == expected
    records = usage_records(len(expected))
    assert {r.requested_model or r.model: (r.model, r.route) for r in records} == expected


def test_the_readme_commands_run_with_the_default_model_names(claude_cli, gateway, fresh_simulator, demo_key):
    """The README's first shell block, exactly (gateway URL and key replaced), with no model settings: the
    main and the background model names the CLI asks for both reach the demo, and the README names them."""
    exported = readme_setup(gateway.url, demo_key)
    model_settings = {"ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_SMALL_FAST_MODEL"} & set(exported)
    assert not model_settings, f"the README's first Claude Code block sets {sorted(model_settings)}; it needs none"
    fresh_simulator.configure(**EXPLORE_CALL)

    run = claude_code_run(EXPLORE_PROMPT, exported=exported, model=None, args=("--allowedTools", "Agent"))

    result = succeeded(run)
    assert result["num_turns"] == 2, run.describe()
    sent = fresh_simulator.requests(path=MESSAGES)
    assert len(sent) == 3 and all(record["model"] == "sim-echo" for record in sent), sent
    records = usage_records(3)
    assert {(r.model, r.route) for r in records} == {(DEMO_CLAUDE_MODEL, "alias:claude-*")}
    asked = [r.requested_model for r in records]
    assert asked[0] == asked[2] != asked[1], asked
    assert all(name.startswith("claude-") for name in asked), asked
    text = section("Claude Code")
    for name in (asked[0], asked[1]):
        assert f"`{name}`" in text, f"the README's Claude Code section does not name {name}, which the CLI asks for"


def test_the_readme_model_settings_choose_the_gateway_models(claude_cli, gateway, fresh_simulator, demo_key):
    """The README's first shell block plus the one naming the models: ANTHROPIC_MODEL serves the conversation,
    ANTHROPIC_DEFAULT_HAIKU_MODEL the background work, each by its own name (no alias)."""
    found = [block for block in readme_exports()[1:] if "ANTHROPIC_MODEL" in block]
    assert len(found) == 1, "the README's Claude Code section has one more shell block, naming the models"
    [chosen] = found
    main_model, haiku_model = chosen["ANTHROPIC_MODEL"], chosen["ANTHROPIC_DEFAULT_HAIKU_MODEL"]
    demo_models = {model["name"] for model in demo_config(fresh_simulator.url)["models"]}
    assert {main_model, haiku_model} <= demo_models, "the README's example names should be demo models"
    assert main_model != haiku_model
    fresh_simulator.configure(**EXPLORE_CALL)

    run = claude_code_run(
        EXPLORE_PROMPT,
        exported={**readme_setup(gateway.url, demo_key), **chosen},
        model=None,
        args=("--allowedTools", "Agent"),
    )

    succeeded(run)
    records = usage_records(3)
    assert [(r.model, r.route, r.requested_model) for r in records] == [
        (main_model, "default", ""),
        (haiku_model, "default", ""),
        (main_model, "default", ""),
    ]


def test_the_readme_yaml_routes_claude_code_names_before_the_demo(tmp_path, monkeypatch):
    """The README's Claude Code YAML imports as written, also over the demo, and its models serve the
    CLI's names instead of the demo's catch-all."""
    gateway_config_import(data_text=yaml.safe_dump(demo_config("http://127.0.0.1:9100")), source_name="demo")
    found = code_blocks(section("Claude Code"), "yaml")
    assert len(found) == 1, "the README's Claude Code section has one YAML example"
    [block] = found
    config = yaml.safe_load(block)
    for provider in config.get("providers", []):
        if "api_key_env" in provider:
            monkeypatch.setenv(provider["api_key_env"], "sk-upstream-readme")
    path = tmp_path / "claude-code.yaml"
    path.write_text(block)

    call_command("import_gateway_config", str(path), stdout=StringIO())

    table = route_table_load()
    chosen = {model["name"] for model in config["models"]}
    for name in (CLI_MAIN_MODEL, "claude-sonnet-4-6", CLI_HAIKU_MODEL):
        served = alias_resolve(table.routing, table.models, name)
        assert served is not None and served[0] in chosen and served[1].startswith("alias:"), (name, served)
    main = alias_resolve(table.routing, table.models, CLI_MAIN_MODEL)[0]
    background = alias_resolve(table.routing, table.models, CLI_HAIKU_MODEL)[0]
    assert main != background, "the README example gives background work a model of its own"
