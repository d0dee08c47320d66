"""The Claude Code CLI (`@anthropic-ai/claude-code`) as a user runs it, pointed at a gateway.

The CLI is installed with npm into `var/claude-code/` on first use and reused afterwards. Each run gets
a fresh HOME and only the environment a user sets for a gateway. In `-p` (print) mode the CLI needs no
onboarding: it uses ANTHROPIC_API_KEY (sent as `x-api-key`) without the approval prompt of interactive
mode and skips the workspace trust dialog, so no pre-written `~/.claude.json` is needed. With
non-essential traffic (updater, telemetry, error reports, feedback) switched off, the only connections
it opens go to ANTHROPIC_BASE_URL: a `HEAD /` as a warm-up, then `POST /v1/messages?beta=true`.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.cli import cli_run, npm_install

ROOT = Path(__file__).resolve().parents[2]
INSTALL_DIR = ROOT / "var" / "claude-code"
CLAUDE = INSTALL_DIR / "node_modules" / ".bin" / "claude"
# The major version is pinned: a new major may change the wire format the tests rely on.
PACKAGE = "@anthropic-ai/claude-code@2"


def claude_code_install(timeout: float = 300.0) -> Path:
    """The `claude` executable, installed with npm when it is not there yet."""
    if CLAUDE.exists():
        return CLAUDE
    return npm_install(PACKAGE, prefix=INSTALL_DIR, executable=CLAUDE, timeout=timeout)


@dataclass
class ClaudeCodeRun:
    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    # The `--output-format json` result object; None when stdout did not end with one.
    result: dict | None

    def describe(self) -> str:
        """Everything a failed assertion needs to show."""
        return (
            f"claude exited with {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def claude_code_shell_env(*, home: Path) -> dict[str, str]:
    """What any shell has before the user exports anything, and nothing from the test process (no stray
    ANTHROPIC_* or proxy settings)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "SHELL": shutil.which("bash") or "/bin/sh",
        "TERM": "dumb",
    }


def claude_code_env(
    *, home: Path, base_url: str, api_key: str, model: str | None, small_model: str | None = None
) -> dict[str, str]:
    """The environment of a user who points Claude Code at the gateway. `model` None: Claude Code's own
    default model names."""
    small_model = small_model or model
    env = {
        **claude_code_shell_env(home=home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    if model is not None:
        env["ANTHROPIC_MODEL"] = model
        # Background work (titles, summaries) uses the "small, fast" model: older releases read the first
        # name, newer ones the second.
        env["ANTHROPIC_SMALL_FAST_MODEL"] = small_model
        env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = small_model
    return env


def claude_code_run(
    prompt: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None,
    small_model: str | None = None,
    exported: dict[str, str] | None = None,
    cwd: Path | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> ClaudeCodeRun:
    """`claude -p PROMPT --output-format json` in `cwd` (a fresh temporary folder when None) with a fresh HOME.

    The environment is claude_code_env's, or, with `exported`, exactly the variables given there (as a
    user exported them) on top of a bare shell's. The whole process group is killed when it outlives
    `timeout`; the run is returned either way.
    """
    if exported is None and (base_url is None or api_key is None):
        raise ValueError("claude_code_run needs base_url and api_key, or the whole environment in `exported`")
    claude = claude_code_install()
    scratch = Path(tempfile.mkdtemp(prefix="gw-claude-code-"))
    home = scratch / "home"
    home.mkdir()
    if cwd is None:
        cwd = scratch / "project"
        cwd.mkdir()
    command = [str(claude), "-p", prompt, "--output-format", "json", *args]
    if exported is None:
        env = claude_code_env(home=home, base_url=base_url, api_key=api_key, model=model, small_model=small_model)
    else:
        env = {**claude_code_shell_env(home=home), **exported}
    try:
        returncode, stdout, stderr, seconds = cli_run(command, cwd=cwd, env=env, timeout=timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ClaudeCodeRun(
        command=command,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=seconds,
        result=_last_json_object(stdout),
    )


def _last_json_object(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None
