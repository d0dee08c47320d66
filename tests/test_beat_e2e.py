"""Celery beat on more than one host: two real `celery beat` processes and a worker against one Redis. The
schedule and its lock live in Redis (aigateway.beat, celery-redbeat), so each periodic task is sent once per
period, not once per beat; when the beat that sends dies, the other takes over within the lock's lifetime;
a Redis outage does not end a beat; and the usage flush writes every event once throughout."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db.models import Count

from accounts.models import Tier, UsageRecord
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.usage import USAGE_QUEUE_KEY, usage_record
from aigateway.embedded_redis import redis_server_start
from aigateway.redis import redis_sync
from providers.models import Model
from tests.support.celery import CeleryWorkerProcess, broker_url_for
from tests.support.database import database_url_for_subprocess
from tests.support.gateway import ROOT
from tests.support.ports import stop_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

PERIOD = 0.5  # GATEWAY_USAGE_FLUSH_SECONDS
LOCK = 3  # GATEWAY_BEAT_LOCK_SECONDS: a dead beat's lock lapses after this; beats tick every LOCK / 5 s
WINDOW = 6.0
SENT = re.compile(r"Sending due task flush-usage\b")
LOCK_KEY = "gw:beat::lock"


class BeatProcess:
    """One standalone `celery -A aigateway beat`, its own process group, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "aigateway", "beat", "-l", "info",
                   "-s", str(workdir / f"{name}-schedule")]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sent(self, since: int = 0) -> int:
        return len(SENT.findall(self.log()[since:]))

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> float:
        """SIGTERM; the seconds it took to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        return time.monotonic() - started


def _push_usage(redis_url: str, settings, api_key_id: int, start: int, count: int) -> list[str]:
    settings.REDIS_URL = redis_url
    ids = [f"beat-{index:04d}" for index in range(start, start + count)]

    async def push():
        for request_id in ids:
            await usage_record(
                {
                    "request_id": request_id,
                    "api_key_id": api_key_id,
                    "model": "gpt-beat",
                    "provider": "sim",
                    "deployment_id": None,
                    "endpoint": "chat.completions",
                    "stream": True,
                    "status_code": 200,
                    "error_type": "",
                    "prompt_tokens": 3,
                    "completion_tokens": 5,
                    "tokens_estimated": False,
                    "ttfb_upstream_ms": 5.0,
                    "ttfb_ms": 6.0,
                    "duration_ms": 50.0,
                    "chunk_count": 3,
                    "interval_mean_ms": 1.0,
                    "interval_p50_ms": 1.0,
                    "interval_p95_ms": 2.0,
                    "interval_max_ms": 3.0,
                    "zero_interval_share": 0.0,
                    "attempts": 1,
                    "created_at": time.time(),
                }  # fmt: skip
            )

    asyncio.run(push())
    return ids


def _records_once(ids: list[str]) -> bool:
    records = UsageRecord.objects.filter(request_id__in=ids)
    rows = records.aggregate(n=Count("id"), distinct=Count("request_id", distinct=True))
    assert rows["n"] == rows["distinct"], rows
    return rows["n"] == len(ids)


def test_two_beats_send_each_task_once_per_period_and_the_second_takes_over(tmp_path, settings):
    Model.objects.create(name="gpt-beat")
    tier = Tier.objects.create(name="beat-test")
    api_key_id = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="beat").api_key.pk

    socket_path = tmp_path / "redis.sock"
    redis_process = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
    redis_url = f"unix://{socket_path}"
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": broker_url_for(redis_url),
            "DATABASE_URL": database_url_for_subprocess(),
            "GATEWAY_USAGE_FLUSH_SECONDS": str(PERIOD),
            "GATEWAY_HEALTH_CHECK_SECONDS": "3600",
            "GATEWAY_BEAT_LOCK_SECONDS": str(LOCK),
            "PYTHONUNBUFFERED": "1",
        }
    )
    worker = CeleryWorkerProcess(env=env, beat=False, loglevel="info", workdir=tmp_path)
    beats: list[BeatProcess] = []
    try:
        worker.start().wait_ready()
        first = BeatProcess("beat-a", env, tmp_path)
        beats.append(first)
        eventually(lambda: first.sent() >= 2, timeout=30, what="the first beat sending")
        second = BeatProcess("beat-b", env, tmp_path)
        beats.append(second)
        eventually(lambda: "beat: Starting..." in second.log(), timeout=30, what="the second beat starting")
        time.sleep(2 * LOCK / 5 + 1.0)  # a second beat that sends on its own has begun by now

        # Several periods with both running: one flush sent per period in all, from one beat only.
        offsets = [len(beat.log()) for beat in beats]
        ids = _push_usage(redis_url, settings, api_key_id, 0, 40)
        time.sleep(WINDOW)
        sent = [beat.sent(offset) for beat, offset in zip(beats, offsets, strict=True)]
        expected = WINDOW / PERIOD
        assert sum(sent) <= expected * 1.25 + 2, f"flushes sent by the two beats in {WINDOW:g}s: {sent}"
        assert sum(sent) >= expected * 0.5, f"flushes sent by the two beats in {WINDOW:g}s: {sent}"
        assert sent[1] == 0, f"the standing-by beat sent tasks: {sent}"
        eventually(lambda: _records_once(ids), timeout=20, what="the first events flushed")
        received = len(re.findall(r"Task accounts\.tasks\.flush_usage\[[^\]]+\] received", worker.log()))
        assert received >= sum(sent), (received, sent)

        # The sending beat dies (no release): the other takes over once the lock lapses, and alone.
        killed_at = time.monotonic()
        first.kill()
        eventually(lambda: second.sent() >= 1, timeout=LOCK + 10, what="the second beat taking over")
        took_over = time.monotonic() - killed_at
        assert "beat: Acquired lock" in second.log()
        assert took_over <= LOCK + 2 * LOCK / 5 + 3, took_over
        offset = len(second.log())
        time.sleep(WINDOW / 2)
        alone = second.sent(offset)
        assert expected * 0.25 <= alone <= expected / 2 * 1.25 + 2, alone

        # Redis goes away for a moment: the beat waits and goes on sending (it used to end).
        stop_process(redis_process)
        time.sleep(2.0)
        redis_process = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
        offset = len(second.log())
        eventually(lambda: second.sent(offset) >= 2, timeout=LOCK + 15, what="sending after the Redis outage")
        assert second.process.poll() is None
        assert "Traceback" not in second.log(), second.log()[-3000:]
        more = _push_usage(redis_url, settings, api_key_id, 40, 20)
        eventually(lambda: _records_once(ids + more), timeout=30, what="events after the outage flushed")

        # A beat that stops releases the lock at once.
        assert redis_sync(redis_url).exists(LOCK_KEY)
        assert second.stop() < 10
        assert not redis_sync(redis_url).exists(LOCK_KEY)
        assert redis_sync(redis_url).llen(USAGE_QUEUE_KEY) == 0
        print(
            f"beats: {sum(sent)} flushes sent in {WINDOW:g}s at one per {PERIOD:g}s ({sent} per beat); "
            f"failover after {took_over:.1f}s (lock {LOCK}s); {len(ids) + len(more)} events stored once"
        )
    finally:
        for beat in beats:
            beat.stop()
        worker.stop()
        stop_process(redis_process)
