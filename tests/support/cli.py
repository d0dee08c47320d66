"""Running a command-line client (Claude Code, Codex) as a user would, bounded in time."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def cli_run(
    command: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int | None, str, str, float]:
    """(returncode, stdout, stderr, seconds) of `command`, run in its own process group so that the tool
    subprocesses it starts (shells, searches) stop with it; the whole group is killed when it outlives
    `timeout`, and the run is returned either way."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[killed: no result within {timeout}s]"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, stdout, stderr, time.monotonic() - started


class CliInstallError(AssertionError):
    """A CLI could not be installed (a test failure, not a skip: the end-to-end proofs need it)."""


def npm_install(package: str, *, prefix: Path, executable: Path, timeout: float = 300.0) -> Path:
    """`executable` after `npm install --prefix PREFIX PACKAGE`; a CliInstallError naming what failed."""
    npm = shutil.which("npm")
    if npm is None:
        raise CliInstallError(f"npm is not installed: it is needed to install {package}")
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), package, "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(command, cwd=prefix, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CliInstallError(f"{' '.join(command)} did not finish within {timeout}s") from None
    if done.returncode != 0 or not executable.exists():
        raise CliInstallError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return executable
