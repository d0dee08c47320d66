"""Benchmark of the rate-limit and usage hot path, and of the usage flush through a real Celery worker.

Starts its own embedded Redis and a temporary SQLite database, then prints p50/p99 latency of
`limits_admit` + `limits_settle` and of `usage_record`, and how many usage records per second one
Celery worker writes.

    .venv/bin/python bench/bench_limits.py [--iterations 5000] [--events 20000]
"""

import argparse
import asyncio
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def environment(tmp: Path, redis_url: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "aigateway.settings",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": "redis+socket://" + redis_url.removeprefix("unix://"),
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "GATEWAY_USAGE_FLUSH_SECONDS": "0.2",
        "GATEWAY_HEALTH_CHECK_SECONDS": "3600",
        "DJANGO_LOG_LEVEL": "WARNING",
    }


def key_context(key_id: int, **limits):
    from accounts.context import KeyContext

    values = {"rpm": None, "tpm": None, "max_concurrent": None, "daily_tokens": None, "max_output_tokens": None}
    values.update(limits)
    return KeyContext(
        key_id=key_id,
        key_prefix="sk-gw-bench",
        key_name="bench",
        owner_id=1,
        is_staff=False,
        tier_name="bench",
        max_compare_models=4,
        **values,
    )


def usage_event(index: int, run: str) -> dict:
    return {
        "request_id": f"{run}-{index}",
        "api_key_id": None,
        "model": "bench-model",
        "provider": "sim",
        "deployment_id": None,
        "endpoint": "chat.completions",
        "stream": True,
        "status_code": 200,
        "error_type": "",
        "prompt_tokens": 100,
        "completion_tokens": 200,
        "tokens_estimated": False,
        "ttfb_upstream_ms": 5.0,
        "ttfb_ms": 6.0,
        "duration_ms": 50.0,
        "chunk_count": 20,
        "interval_mean_ms": 2.0,
        "interval_p50_ms": 2.0,
        "interval_p95_ms": 4.0,
        "interval_max_ms": 9.0,
        "zero_interval_share": 0.0,
        "attempts": 1,
        "created_at": time.time(),
    }


async def measure_hot_path(iterations: int) -> dict[str, list[float]]:
    from accounts.budgets import BudgetRef
    from accounts.limits import limits_admit, limits_settle
    from accounts.usage import USAGE_QUEUE_KEY, usage_record
    from aigateway.redis import redis_async

    every_limit = key_context(1, rpm=10**7, tpm=10**9, max_concurrent=10_000, daily_tokens=10**15)
    # The same limits plus three budgets applying (key, team, global), as a key in a team sees them.
    budgets = tuple(
        BudgetRef(id=9000 + i, scope=scope, name=scope, period=period, limit_units=10**17)
        for i, (scope, period) in enumerate([("key", "day"), ("team", "month"), ("global", "total")])
    )
    with_budgets = key_context(4, rpm=10**7, tpm=10**9, max_concurrent=10_000, daily_tokens=10**15)
    with_budgets = dataclasses.replace(with_budgets, budgets=budgets)
    rpm_only = key_context(2, rpm=10**7)
    no_limits = key_context(3)
    samples: dict[str, list[float]] = {
        "admit+settle (all limits)": [],
        "admit+settle (+3 budgets)": [],
        "admit (rpm only)": [],
        "admit (no limits)": [],
    }
    samples["usage_record"] = []
    for i in range(200):  # warm up connections and script cache (and seed the budget counters)
        admission = await limits_admit(every_limit, estimate_tokens=100, request_id=f"warm-{i}")
        await limits_settle(every_limit, admission, actual_tokens=90)
        admission = await limits_admit(with_budgets, estimate_tokens=100, request_id=f"wb-{i}", max_cost_units=10**6)
        await limits_settle(with_budgets, admission, actual_tokens=90, cost_units=5 * 10**5)
    for i in range(iterations):
        started = time.perf_counter_ns()
        admission = await limits_admit(every_limit, estimate_tokens=100, request_id=f"r-{i}")
        await limits_settle(every_limit, admission, actual_tokens=90)
        samples["admit+settle (all limits)"].append((time.perf_counter_ns() - started) / 1000)

        started = time.perf_counter_ns()
        admission = await limits_admit(with_budgets, estimate_tokens=100, request_id=f"b-{i}", max_cost_units=10**6)
        await limits_settle(with_budgets, admission, actual_tokens=90, cost_units=5 * 10**5)
        samples["admit+settle (+3 budgets)"].append((time.perf_counter_ns() - started) / 1000)

        started = time.perf_counter_ns()
        await limits_admit(rpm_only, estimate_tokens=100, request_id=f"o-{i}")
        samples["admit (rpm only)"].append((time.perf_counter_ns() - started) / 1000)

        started = time.perf_counter_ns()
        await limits_admit(no_limits, estimate_tokens=100, request_id=f"n-{i}")
        samples["admit (no limits)"].append((time.perf_counter_ns() - started) / 1000)

        event = usage_event(i, "hot")
        started = time.perf_counter_ns()
        await usage_record(event)
        samples["usage_record"].append((time.perf_counter_ns() - started) / 1000)
    await redis_async().delete(USAGE_QUEUE_KEY)
    return samples


def start_worker(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen, str]:
    nodename = f"bench-{uuid.uuid4().hex[:6]}@localhost"
    log = (tmp / "worker.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "aigateway", "worker", "--pool", "solo", "-l", "warning",
         "-n", nodename, "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-B", "-s", str(tmp / "celerybeat-schedule")],
        cwd=PROJECT_DIR, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    from celery import Celery

    probe = Celery("bench-probe", broker=env["CELERY_BROKER_URL"], set_as_current=False)
    deadline = time.monotonic() + 60
    while not probe.control.ping(destination=[nodename], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("celery worker did not start; see " + str(tmp / "worker.log"))
    probe.close()
    return process, nodename


def measure_worker_throughput(env: dict[str, str], tmp: Path, events: int) -> tuple[float, int]:
    import orjson

    from accounts.models import UsageRecord
    from accounts.usage import USAGE_QUEUE_KEY
    from aigateway.redis import redis_sync

    process, _ = start_worker(env, tmp)
    try:
        payloads = [orjson.dumps(usage_event(i, "flush")) for i in range(events)]
        client = redis_sync()
        started = time.perf_counter()
        for start in range(0, events, 1000):
            client.rpush(USAGE_QUEUE_KEY, *payloads[start : start + 1000])
        while UsageRecord.objects.count() < events:
            if time.perf_counter() - started > 300:
                raise RuntimeError("flush did not finish within 300 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        return elapsed, UsageRecord.objects.count()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()

    from aigateway.embedded_redis import redis_server_start

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    redis_process = redis_server_start(socket_path=tmp / "redis.sock", data_dir=tmp)
    env = environment(tmp, f"unix://{tmp / 'redis.sock'}")
    os.environ.update(env)
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=PROJECT_DIR,
            env={**os.environ, **env},
            check=True,
        )
        import django

        django.setup()

        samples = asyncio.run(measure_hot_path(args.iterations))
        elapsed, stored = measure_worker_throughput(env, tmp, args.events)

        print(f"\nhot path against the embedded Redis (unix socket), {args.iterations} sequential calls each")
        print(f"{'operation':<28} {'p50 us':>9} {'p99 us':>9} {'mean us':>9}")
        for name, values in samples.items():
            print(
                f"{name:<28} {percentile(values, 0.50):>9.1f} {percentile(values, 0.99):>9.1f}"
                f" {statistics.fmean(values):>9.1f}"
            )
        print(f"\nusage flush, one Celery worker (solo pool, beat every 0.2 s), SQLite: {stored} records")
        print(f"{'events':<10} {'seconds':>9} {'records/s':>11}")
        print(f"{args.events:<10} {elapsed:>9.2f} {args.events / elapsed:>11.0f}")
    finally:
        redis_process.terminate()
        redis_process.wait(10)


if __name__ == "__main__":
    main()
