"""Real Redis servers on free loopback TCP ports for high-availability tests: a primary, its replicas and the
Redis Sentinels watching them (Debian's `redis-server` and `redis-sentinel`, installed by .ci/test-deps), and
a plain server of any binary. Every process is started with its own config file under a test folder and
stopped (or SIGKILLed, as a crash) by the test that started it."""

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.support.ports import free_port, stop_process

MASTER_NAME = "gwmaster"


def debian_redis() -> tuple[str, str]:
    """The paths of redis-server and redis-sentinel; the test is skipped (with the reason) when missing."""
    server, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
    if not server or not sentinel:
        pytest.skip("redis-server and redis-sentinel are not installed (.ci/test-deps installs them)")
    return server, sentinel


@dataclass
class RedisNode:
    """One redis-server (or redis-sentinel) process on 127.0.0.1:port."""

    binary: str
    port: int
    folder: Path
    config: list[str]
    password: str = ""
    # Client options of a TLS-only node (ssl, ssl_ca_certs...).
    tls: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> "RedisNode":
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "redis.conf"
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.folder}", "loglevel warning", *self.config]
        config_path.write_text("\n".join(lines) + "\n")
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen([self.binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.binary} on {self.port} did not start:\n{self.log()}") from None
                time.sleep(0.02)

    def client(self, **options) -> redis.Redis:
        options = {"password": self.password or None, "socket_timeout": 2, **self.tls, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no last write."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


def redis_node(
    binary: str, folder: Path, *config: str, password: str = "", tls: tuple[Path, Path, Path] | None = None
) -> RedisNode:
    """A started server without persistence (plus `config` lines); with `tls` (certificate, key and CA files),
    one that speaks TLS only, without asking clients for certificates."""
    port = free_port()
    lines = ['save ""', "appendonly no", *config]
    if password:
        lines += [f"requirepass {password}", f"masterauth {password}"]
    client_tls = {}
    if tls is not None:
        cert, key, ca = tls
        lines += ["port 0", f"tls-port {port}", f"tls-cert-file {cert}", f"tls-key-file {key}"]
        lines += [f"tls-ca-cert-file {ca}", "tls-auth-clients no"]
        client_tls = {"ssl": True, "ssl_ca_certs": str(ca)}
    return RedisNode(binary, port, folder, lines, password, client_tls).start()


@dataclass
class SentinelCluster:
    """A primary, `replicas` replicas and `sentinels` sentinels (quorum 2) watching them as MASTER_NAME, all
    requiring `password` (the sentinels their own `sentinel_password`)."""

    folder: Path
    password: str
    sentinel_password: str
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    nodes: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)

    def start(self, *, replicas: int = 1, sentinels: int = 3) -> "SentinelCluster":
        server, sentinel = debian_redis()
        try:
            primary = redis_node(server, self.folder / "node-0", password=self.password)
            self.nodes.append(primary)
            for index in range(1, replicas + 1):
                replica = redis_node(
                    server, self.folder / f"node-{index}", f"replicaof 127.0.0.1 {primary.port}", password=self.password
                )
                self.nodes.append(replica)
            for index in range(sentinels):
                config = [
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary.port} 2",
                    f"sentinel auth-pass {MASTER_NAME} {self.password}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    f"requirepass {self.sentinel_password}",
                ]
                node = RedisNode(
                    sentinel, free_port(), self.folder / f"sentinel-{index}", config, self.sentinel_password
                )
                self.sentinels.append(node.start())
            self.wait_formed(replicas=replicas, sentinels=sentinels)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_formed(self, *, replicas: int, sentinels: int, timeout: float = 15.0) -> None:
        """Until every sentinel knows the others and the replicas, and every replica is in sync."""
        deadline = time.monotonic() + timeout
        while True:
            states = [node.client().sentinel_master(MASTER_NAME) for node in self.sentinels]
            synced = all(node.client().info("replication").get("master_link_status") == "up" for node in self.nodes[1:])
            formed = all(
                state["num-other-sentinels"] == sentinels - 1 and state["num-slaves"] == replicas for state in states
            )
            if formed and synced:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinels did not form within {timeout}s: {states}")
            time.sleep(0.1)

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for this cluster."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)

    def master_port(self) -> int | None:
        """The port the sentinels' majority calls the master's now."""
        ports = []
        for node in self.sentinels:
            try:
                ports.append(int(node.client().sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
            except (redis.RedisError, TypeError):
                continue
        return max(set(ports), key=ports.count) if ports else None

    def master(self) -> RedisNode:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()
