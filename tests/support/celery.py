"""A real Celery worker (optionally with embedded beat) as a subprocess, against the test Redis and the
test database. Tests that use it need `@pytest.mark.django_db(transaction=True)` so their data is
committed where the worker can see it.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings

from tests.support.database import database_url_for_subprocess

PROJECT_DIR = Path(__file__).resolve().parents[2]


def broker_url_for(redis_url: str) -> str:
    """Celery (kombu) spells a Redis unix socket `redis+socket:///path`, redis-py `unix:///path`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


class CeleryWorkerProcess:
    """One `celery -A aigateway worker --pool solo` process group; `kill()` is SIGKILL for the whole group."""

    def __init__(self, *, env: dict[str, str], beat: bool, loglevel: str, workdir: Path):
        self.env = env
        self.beat = beat
        self.loglevel = loglevel
        self.workdir = workdir
        self.nodename = f"gwtest-{uuid.uuid4().hex[:8]}@localhost"
        self.log_path = workdir / "worker.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "celery", "-A", "aigateway", "worker",
            "--pool", "solo", "-l", self.loglevel, "-n", self.nodename,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if self.beat:
            command += ["-B", "-s", str(self.workdir / "celerybeat-schedule")]
        return command

    def start(self) -> "CeleryWorkerProcess":
        assert self.process is None or self.process.poll() is not None, "worker already running"
        log = self.log_path.open("ab")
        # Own process group: the embedded beat child must die with the worker, even on SIGKILL.
        self.process = subprocess.Popen(
            self.command(), cwd=PROJECT_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the worker answers a broadcast ping (it then consumes tasks)."""
        # A separate app: the project's app is configured for this process, not for the worker's broker.
        probe = Celery("gw-worker-probe", broker=self.env["CELERY_BROKER_URL"], set_as_current=False)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError(f"celery worker exited early:\n{self.log()}")
                if probe.control.ping(destination=[self.nodename], timeout=0.5):
                    return
        finally:
            probe.close()
        raise RuntimeError(f"celery worker not ready within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the group: the current task finishes), SIGKILL if it hangs."""
        if not self.alive:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and its beat child at once, as a crash would."""
        if not self.alive:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def restart(self, *, wait: bool = False) -> "CeleryWorkerProcess":
        self.stop()
        self.start()
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal_group(self, signum: int) -> None:
        # Only while the leader is not yet reaped: its pid (= the group id) cannot have been reused.
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


@pytest.fixture
def celery_worker(transactional_db, redis_server):
    """Factory: `celery_worker(beat=True, flush_seconds=0.5)` starts a worker and returns its handle.

    Every worker started through the factory is stopped when the test ends.
    """
    workers: list[CeleryWorkerProcess] = []
    tmp = Path(tempfile.mkdtemp(prefix="gw-celery-"))

    def start(
        *,
        beat: bool = True,
        flush_seconds: float = 0.5,
        loglevel: str = "warning",
        wait: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> CeleryWorkerProcess:
        env = dict(os.environ)
        env.update(
            {
                # None while a test overrides settings (pytest-django's `settings` fixture).
                "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE
                or os.environ.get("DJANGO_SETTINGS_MODULE", "aigateway.settings"),
                "REDIS_URL": redis_server,
                "CELERY_BROKER_URL": broker_url_for(redis_server),
                "DATABASE_URL": database_url_for_subprocess(),
                "GATEWAY_USAGE_FLUSH_SECONDS": str(flush_seconds),
                # Keep beat to the task under test.
                "GATEWAY_HEALTH_CHECK_SECONDS": "3600",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra_env or {})
        workdir = tmp / f"worker-{len(workers)}"
        workdir.mkdir()
        worker = CeleryWorkerProcess(env=env, beat=beat, loglevel=loglevel, workdir=workdir).start()
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
    for worker in workers:
        log = worker.log().strip()
        if log:
            print(f"--- celery worker {worker.nodename} log ---\n{log[-4000:]}")
    shutil.rmtree(tmp, ignore_errors=True)
