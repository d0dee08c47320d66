"""The upstream simulator as a real subprocess (`manage.py run_simulator --port 0`) and a handle to drive it.

`simulator` is one process for the whole session; `fresh_simulator` is the same process with the request
log, fail counters and global config cleared around the test; `simulator_factory` starts extra ones
(for example with `api_key=`) that stop when the test ends.
"""

import asyncio
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.ports import stop_process, wait_http

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "simulator listening on "


class SimulatorHandle:
    """A running simulator: its URLs and its control API (`/_sim/...`)."""

    def __init__(self, *, url: str, process: subprocess.Popen, api_key: str | None = None) -> None:
        self.url = url
        self.openai_base = url + "/v1"
        self.anthropic_base = url
        self.api_key = api_key
        self.process = process

    def __repr__(self) -> str:
        return f"<SimulatorHandle {self.url}>"

    def _control(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/_sim/{path}", timeout=10.0, **kwargs)
        response.raise_for_status()
        return response

    def requests(self, **filters) -> list[dict]:
        """The request log, oldest first; filters: model=, path=, since_id=."""
        params = {name: str(value) for name, value in filters.items() if value is not None}
        return self._control("GET", "requests", params=params).json()["requests"]

    def reset(self) -> None:
        self._control("POST", "reset")

    def configure(self, **options) -> dict:
        """Set global option overrides (they win over the model suffix and the x-sim-options header)."""
        return self._control("POST", "config", json=options).json()

    def clear_config(self) -> None:
        self._control("DELETE", "config")

    def config(self) -> dict:
        return self._control("GET", "config").json()

    def wait_for_requests(
        self, predicate: Callable[[list[dict]], bool], *, timeout: float = 2.0, **filters
    ) -> list[dict]:
        """Poll the request log until `predicate(records)` holds; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.requests(**filters)
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"simulator log did not match within {timeout}s: {records}")
            time.sleep(0.02)

    async def await_requests(
        self, predicate: Callable[[list[dict]], bool], *, timeout: float = 2.0, **filters
    ) -> list[dict]:
        """`wait_for_requests` for async tests: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            records = await asyncio.to_thread(self.requests, **filters)
            if predicate(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"simulator log did not match within {timeout}s: {records}")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.process)


def _drain(stream, lines: queue.Queue) -> None:
    # Keeps reading so the child never blocks on a full stdout pipe.
    for line in stream:
        lines.put(line)
    lines.put(None)


def simulator_start(*, api_key: str | None = None, timeout: float = 30.0) -> SimulatorHandle:
    command = [sys.executable, "manage.py", "run_simulator", "--port", "0"]
    if api_key is not None:
        command += ["--api-key", api_key]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_drain, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"simulator did not report ready within {timeout}s") from None
            if line is None:
                raise RuntimeError(f"simulator exited with {process.wait()} before it was ready")
            if line.startswith(READY_PREFIX):
                url = line[len(READY_PREFIX) :].strip()
                wait_http(f"{url}/_sim/health", timeout=timeout, process=process)
                return SimulatorHandle(url=url, process=process, api_key=api_key)
    except BaseException:
        stop_process(process)
        raise


@pytest.fixture(scope="session")
def simulator():
    handle = simulator_start()
    yield handle
    handle.stop()


@pytest.fixture
def fresh_simulator(simulator):
    simulator.reset()
    simulator.clear_config()
    yield simulator
    simulator.clear_config()


@pytest.fixture
def simulator_factory():
    started: list[SimulatorHandle] = []

    def start(*, api_key: str | None = None) -> SimulatorHandle:
        handle = simulator_start(api_key=api_key)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()
