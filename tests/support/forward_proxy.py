"""A real forward proxy for egress tests: proxy.py (a maintained HTTP proxy server) in a process of its
own on 127.0.0.1, serving absolute-form requests for http upstreams and CONNECT tunnels for https ones.
It resolves names through a host map (`HostMap`, its plugin), so an upstream addressed by a name only the
proxy knows (`upstream.test`) is reachable through the proxy and nowhere else."""

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from proxy.http.proxy import HttpProxyBasePlugin

from tests.support.ports import stop_process

ROOT = Path(__file__).resolve().parents[2]
HOSTS_ENV = "TEST_PROXY_HOSTS"


class HostMap(HttpProxyBasePlugin):
    """proxy.py plugin (runs in the proxy's process): the upstream address of a name in the host map."""

    def resolve_dns(self, host: str, port: int):
        return json.loads(os.environ.get(HOSTS_ENV, "{}")).get(host), None


def _accepts(port_file: Path) -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(port_file.read_text())), timeout=1).close()
    except (OSError, ValueError):
        return False
    return True


@dataclass
class ForwardProxy:
    url: str
    process: subprocess.Popen
    log_path: Path
    user: str = ""
    password: str = ""

    @property
    def url_with_credentials(self) -> str:
        return self.url.replace("http://", f"http://{self.user}:{self.password}@", 1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def served(self, needle: str) -> int:
        """How many requests the proxy logged whose line holds `needle` (e.g. "CONNECT upstream.test:")."""
        return sum(1 for line in self.log().splitlines() if "access_log" in line and needle in line)

    def stop(self) -> None:
        stop_process(self.process)


def forward_proxy_start(directory: Path, hosts: dict[str, str], *, user: str = "", password: str = "") -> ForwardProxy:
    """A proxy on a free loopback port resolving `hosts` (name -> address); with `user`, it requires those
    Basic credentials (Proxy-Authorization)."""
    port_file = directory / f"proxy-{time.monotonic_ns()}.port"
    log_path = port_file.with_suffix(".log")
    command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
               "--port-file", str(port_file), "--num-acceptors", "1", "--num-workers", "1",
               "--plugins", "tests.support.forward_proxy.HostMap", "--log-level", "INFO"]  # fmt: skip
    if user:
        command += ["--basic-auth", f"{user}:{password}"]
    env = {**os.environ, HOSTS_ENV: json.dumps(hosts), "PYTHONPATH": str(ROOT)}
    # The proxy must reach its upstreams directly whatever the test process's environment says.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip() and _accepts(port_file)):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"the forward proxy did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    return ForwardProxy(url=url, process=process, log_path=log_path, user=user, password=password)


@pytest.fixture
def forward_proxy_factory(tmp_path):
    """Start forward proxies: `forward_proxy_factory({"upstream.test": "127.0.0.1"})`; all stop after the test."""
    started: list[ForwardProxy] = []

    def start(hosts: dict[str, str], **credentials) -> ForwardProxy:
        proxy = forward_proxy_start(tmp_path, hosts, **credentials)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
