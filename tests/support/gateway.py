"""Gateway processes for end-to-end tests: a real ASGI server over loopback, sharing the test
database and the test Redis with the test process."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.database import database_url_for_subprocess
from tests.support.ports import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class GatewayHandle:
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def gateway_command(server: str, port: int) -> list[str]:
    """The ASGI server command line: uvicorn (uvloop, httptools with the production read timeouts of
    aigateway.server) or daphne, on loopback."""
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "aigateway.asgi:application", "--host", "127.0.0.1",
                "--port", str(port), "--loop", "uvloop", "--http", "aigateway.server:GatewayHttpProtocol",
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0",
                "aigateway.asgi:application"]  # fmt: skip
    raise ValueError(f"unknown ASGI server {server!r}")


def gateway_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    # Each gateway of a test adds up only its own workers' metrics, not those of the test process.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "aigateway.settings",
            "DATABASE_URL": database_url_for_subprocess(),
            "REDIS_URL": redis_url,
            "GATEWAY_CONFIG_CHECK_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def gateway_start(redis_url: str, tmp_path: Path, *, server: str = "uvicorn", **env_extra) -> GatewayHandle:
    port = free_port()
    command = gateway_command(server, port)
    log_path = tmp_path / f"gateway-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        command, cwd=ROOT, env=gateway_env(redis_url, **env_extra), stdout=log_file, stderr=subprocess.STDOUT
    )
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout=30, process=process)
    except RuntimeError:
        stop_process(process)
        raise RuntimeError(f"gateway did not start:\n{log_path.read_text(errors='replace')}") from None
    return GatewayHandle(url=url, process=process, log_path=log_path)


@pytest.fixture
def gateway_factory(redis_server, tmp_path, django_db_setup):
    started: list[GatewayHandle] = []

    def start(**kwargs) -> GatewayHandle:
        handle = gateway_start(redis_server, tmp_path, **kwargs)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="session")
def gateway(redis_server, tmp_path_factory, django_db_setup):
    """One gateway process for the session (tests create their data with transaction=True)."""
    handle = gateway_start(redis_server, tmp_path_factory.mktemp("gateway"))
    yield handle
    handle.stop()
