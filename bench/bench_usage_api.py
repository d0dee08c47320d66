"""Latency of `GET /api/v1/usage` while the usage worker is down and events pile up in the Redis queue.

Starts its own embedded Redis, a temporary SQLite database and one gateway process (uvicorn), issues a
key, then measures the endpoint over loopback with 0, 3,000 and 100,000 of that key's events queued
(no worker runs, so nothing drains them). Also times `usage_record` for an event of a key, the hot
path's share of the pending totals.

    .venv/bin/python bench/bench_usage_api.py [--calls 50] [--queued 0,3000,100000]
"""

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gateway import gateway_command  # noqa: E402
from tests.support.ports import free_port, stop_process, wait_http  # noqa: E402


def usage_event(index: int, api_key_id: int) -> dict:
    return {
        "request_id": f"bench-{index}",
        "api_key_id": api_key_id,
        "model": f"bench-model-{index % 3}",
        "provider": "sim",
        "deployment_id": None,
        "endpoint": "chat.completions",
        "stream": True,
        "status_code": 200 if index % 10 else 502,
        "error_type": "",
        "prompt_tokens": 100,
        "completion_tokens": 200,
        "tokens_estimated": False,
        "ttfb_upstream_ms": 5.0,
        "ttfb_ms": 6.0,
        "duration_ms": 50.0,
        "chunk_count": 20,
        "attempts": 1,
        "created_at": time.time(),
    }


async def queue_events(start: int, count: int, api_key_id: int) -> None:
    """Queue `count` events through the hot path's own writer, 1,000 at a time."""
    from accounts.usage import usage_record

    for first in range(start, start + count, 1000):
        last = min(first + 1000, start + count)
        await asyncio.gather(*(usage_record(usage_event(i, api_key_id)) for i in range(first, last)))


async def time_usage_record(iterations: int, api_key_id: int) -> list[float]:
    from accounts.usage import USAGE_QUEUE_KEY, usage_record
    from aigateway.redis import redis_async

    samples = []
    for i in range(iterations):
        event = usage_event(10_000_000 + i, api_key_id)
        started = time.perf_counter_ns()
        await usage_record(event)
        samples.append((time.perf_counter_ns() - started) / 1000)
    await redis_async().delete(USAGE_QUEUE_KEY)
    return samples


def measure(client: httpx.Client, url: str, key: str, calls: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (response.status_code, response.text[:300])
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--queued", default="0,3000,100000")
    parser.add_argument("--record-iterations", type=int, default=3000)
    args = parser.parse_args()
    levels = [int(value) for value in args.queued.split(",")]

    from aigateway.embedded_redis import redis_server_start

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-usage-"))
    processes = [redis_server_start(socket_path=tmp / "redis.sock", data_dir=tmp)]
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        REDIS_URL=f"unix://{tmp / 'redis.sock'}",
        DJANGO_SETTINGS_MODULE="aigateway.settings",
        DJANGO_LOG_LEVEL="WARNING",
        # Measured calls come quicker than any sensible throttle allows.
        GATEWAY_USAGE_API_RPM="0",
    )
    # Production settings over plain-HTTP loopback.
    env.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    env.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")
    os.environ.update(env)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from accounts.models import Tier
        from accounts.services import api_key_issue, service_user_get_or_create

        issued = api_key_issue(owner=service_user_get_or_create(), tier=Tier.objects.create(name="bench"), name="b")
        port = free_port()
        log = (tmp / "gateway.log").open("wb")
        gateway = subprocess.Popen(gateway_command("uvicorn", port), cwd=ROOT, env=env, stdout=log, stderr=log)
        log.close()
        processes.append(gateway)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", process=gateway)

        record = asyncio.run(time_usage_record(args.record_iterations, issued.api_key.pk))
        print(f"\nusage_record of a key's event, {args.record_iterations} sequential calls")
        print(f"p50 {statistics.median(record):.1f} us   mean {statistics.fmean(record):.1f} us")

        print(f"\nGET /api/v1/usage, {args.calls} sequential calls, worker stopped")
        print(f"{'queued events':>14} {'p50 ms':>9} {'mean ms':>9} {'max ms':>9}")
        queued = 0
        with httpx.Client(timeout=120) as client:
            for level in levels:
                asyncio.run(queue_events(queued, level - queued, issued.api_key.pk))
                queued = level
                samples = measure(client, url + "/api/v1/usage", issued.plaintext, args.calls)
                print(
                    f"{level:>14,} {statistics.median(samples):>9.1f} {statistics.fmean(samples):>9.1f}"
                    f" {max(samples):>9.1f}"
                )
    finally:
        for process in reversed(processes):
            stop_process(process)


if __name__ == "__main__":
    main()
