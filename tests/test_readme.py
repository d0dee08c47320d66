"""The README says what works: its management commands parse as written (each command exists and takes the
options shown), and its sample gateway.yaml imports as written into an empty database."""

import re
import shlex
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands, load_command_class

from accounts.models import Team, Tier
from providers.models import Model, Provider, RouteRule

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def code_blocks(text: str, language: str | None = None) -> list[str]:
    """The fenced code blocks of `text` (those in `language` when given), in order."""
    blocks, current, current_language = [], None, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, current_language = [], line[3:].strip()
            else:
                if language is None or current_language == language:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def manage_commands() -> list[list[str]]:
    """Every `python manage.py ...` line of the README's code blocks, as argv after manage.py."""
    lines = []
    for block in code_blocks(README.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            match = re.match(r"^(?:\.venv/bin/)?python manage\.py (.+)$", line)
            if match:
                lines.append(shlex.split(match[1]))
    return lines


def test_the_readme_lists_management_commands():
    names = {argv[0] for argv in manage_commands()}
    assert {"import_gateway_config", "issue_key", "export_spend", "seed_demo", "run_simulator"} <= names


@pytest.mark.parametrize("argv", manage_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_each_management_command_parses_as_written(argv):
    name, *args = argv
    commands = get_commands()
    assert name in commands, f"the README names a command that does not exist: {name}"
    command = load_command_class(commands[name], name)
    parser = command.create_parser("manage.py", name)
    # argparse exits (SystemExit) on an unknown option or a missing required one.
    parser.parse_args(args)


@pytest.mark.django_db
def test_the_sample_gateway_yaml_imports_as_written(tmp_path, monkeypatch):
    operating = section("Operating it")
    blocks = code_blocks(operating, "yaml")
    assert len(blocks) >= 2, "the sample gateway.yaml and its teams sample"
    config, teams = blocks[0], blocks[1]
    # What the README says the file needs: ANTHROPIC_API_KEY in the environment.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-readme")
    path = tmp_path / "gateway.yaml"
    path.write_text(config)
    call_command("import_gateway_config", str(path))
    assert set(Provider.objects.values_list("name", flat=True)) == {"sim", "claude"}
    assert set(Model.objects.values_list("name", flat=True)) == {"sim-fast", "sim-slow", "embed", "sim-long"}
    assert Model.objects.get(name="embed").kinds == ["embeddings"]
    assert Model.objects.get(name="sim-long").unsupported_tools == "refuse"
    assert Tier.objects.filter(name="free").exists()
    assert RouteRule.objects.count() == 3
    # Its teams, once their members exist.
    for username in ("alice", "bob"):
        get_user_model().objects.create_user(username)
    path.write_text(teams)
    call_command("import_gateway_config", str(path))
    team = Team.objects.get(name="research")
    assert sorted(team.members.values_list("username", flat=True)) == ["alice", "bob"]
    assert [str(b.amount.normalize()) for b in team.budgets.all()] == ["5E+2"]


@pytest.mark.django_db
def test_the_response_cache_yaml_imports_as_written(tmp_path):
    (block,) = code_blocks(section("Response cache"), "yaml")
    path = tmp_path / "gateway.yaml"
    path.write_text(block)
    call_command("import_gateway_config", str(path))
    assert Tier.objects.get(name="evals").cache_ttl_seconds == 3600
    assert Team.objects.get(name="ci").cache_ttl_seconds == 600


@pytest.mark.django_db
def test_the_request_log_yaml_imports_as_written(tmp_path):
    (block,) = code_blocks(section("Request log, audit trail, traces"), "yaml")
    path = tmp_path / "gateway.yaml"
    path.write_text(block)
    call_command("import_gateway_config", str(path))
    assert Tier.objects.get(name="debug").log_bodies == "full"
    assert Team.objects.get(name="support").log_bodies == "metadata"
