"""The Codex CLI (`@openai/codex`) as a user runs it, pointed at a gateway.

The npm package ships a native binary; it is installed with npm into `var/codex/` on first use (or by
.ci/test-deps) and reused afterwards. Each run gets a fresh CODEX_HOME holding only the config a user writes
for a gateway (README "Codex CLI"): a custom model provider whose base URL is the gateway's `/v1`, the key
read from an environment variable, and the Responses wire API. `codex exec --json` prints one JSON event per
line (thread, turn and item events), which the tests read.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cli import cli_run, npm_install

ROOT = Path(__file__).resolve().parents[2]
INSTALL_DIR = ROOT / "var" / "codex"
CODEX = INSTALL_DIR / "node_modules" / ".bin" / "codex"
# Pinned exactly: the CLI is 0.x, and its request shape (tools, headers, websocket) changes between releases.
VERSION = "0.171.0"
PACKAGE = f"@openai/codex@{VERSION}"
KEY_VARIABLE = "GATEWAY_API_KEY"


def codex_installed_version() -> str | None:
    try:
        manifest = json.loads((INSTALL_DIR / "node_modules" / "@openai" / "codex" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("version")


def codex_install(timeout: float = 300.0) -> Path:
    """The `codex` executable at the pinned version, installed with npm when it is not there yet."""
    if CODEX.exists() and codex_installed_version() == VERSION:
        return CODEX
    return npm_install(PACKAGE, prefix=INSTALL_DIR, executable=CODEX, timeout=timeout)


def codex_config(*, base_url: str, model: str, websockets: bool = False) -> str:
    """The config.toml a user writes to use the gateway (README "Codex CLI")."""
    lines = [
        f'model = "{model}"',
        'model_provider = "gateway"',
        "",
        "[model_providers.gateway]",
        'name = "AI Gateway"',
        f'base_url = "{base_url}"',
        f'env_key = "{KEY_VARIABLE}"',
        'wire_api = "responses"',
    ]
    if websockets:
        lines.append("supports_websockets = true")
    return "\n".join(lines) + "\n"


@dataclass
class CodexRun:
    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    events: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        """Everything a failed assertion needs to show."""
        return (
            f"codex exited with {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    def items(self, kind: str) -> list[dict]:
        """The completed items of one type (agent_message, reasoning, command_execution, ...)."""
        return [
            event["item"]
            for event in self.events
            if event.get("type") == "item.completed" and event.get("item", {}).get("type") == kind
        ]

    @property
    def errors(self) -> list[str]:
        return [
            str(event.get("message") or event.get("error"))
            for event in self.events
            if event.get("type") in ("error", "turn.failed")
        ]


def codex_run(
    prompt: str,
    *,
    base_url: str,
    api_key: str,
    model: str,
    cwd: Path | None = None,
    config: str | None = None,
    args: list[str] | None = None,
    timeout: float = 60.0,
) -> CodexRun:
    """`codex exec --json PROMPT` in `cwd` (a fresh temporary folder when None) with a fresh CODEX_HOME and HOME.

    Commands the model asks for run without a sandbox (`danger-full-access`): the tests' commands only read a
    file, and a container may not allow the sandbox's namespaces. The whole process group is killed when it
    outlives `timeout`; the run is returned either way. `args` replaces the arguments after `codex` (the
    prompt included) with a user's own.
    """
    codex = codex_install()
    scratch = Path(tempfile.mkdtemp(prefix="gw-codex-"))
    home = scratch / "home"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(config or codex_config(base_url=base_url, model=model))
    if cwd is None:
        cwd = scratch / "project"
        cwd.mkdir()
    if args is None:
        args = ["exec", "--json", "--skip-git-repo-check", "--ephemeral", "-s", "danger-full-access", prompt]
    command = [str(codex), *args]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        KEY_VARIABLE: api_key,
    }
    try:
        returncode, stdout, stderr, seconds = cli_run(command, cwd=cwd, env=env, timeout=timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    events = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return CodexRun(command, returncode, stdout, stderr, seconds, events)
