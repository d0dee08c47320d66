"""Running a command-line client (Claude Code, Codex) as a user would, bounded in time."""

import os
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
