"""Worker processes benchmark: the production command (`manage.py run_gateway --workers N`) with 1 and with
2 workers (or `--workers 1,2,4`), against the direct upstream simulator, all in one run on one simulator.

Measures non-streamed requests per second at saturation (wrk; with Python's raw client the client itself
is the limit long before two workers are) and the time to first byte of streamed completions, p50/p99 at
concurrency 1 and 50, with the gateway's addition over the direct simulator. Reuses bench_relay's setup
(Redis, database, simulator, key, Celery worker draining usage) and clients.
Usage: `python bench/bench_workers.py [--quick] [--workers 1,2] [--concurrency 50]`.
"""

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.bench_relay import Bench, pct, rps, ttfb  # noqa: E402
from tests.support.ports import free_port, stop_process, wait_http  # noqa: E402


def start_gateway(bench: Bench, workers: int) -> tuple[str, object]:
    """`run_gateway` with `workers` processes; returns its URL once every worker has started."""
    port = free_port()
    env = dict(bench.env)
    # Each gateway gets its own metrics folder (run_gateway's settings create it).
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "manage.py", "run_gateway", "--port", str(port), "--workers", str(workers)]
    log_path = bench.tmp / f"gateway-{workers}w.log"
    process = bench.spawn(command, env, log_path.stem)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout=60, process=process)
    # /health answers as soon as one worker is up; each worker logs its startup (info level, once).
    deadline = time.monotonic() + 60
    while log_path.read_text(errors="replace").count("Application startup complete") < workers:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"gateway with {workers} workers did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return url, process


def _cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by a process and its children (a gateway's workers)."""
    if pid is None:
        return 0.0
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure(name: str, base: str, key: str, model: str, args, pid: int | None = None) -> dict:
    row = {"target": name}
    one = asyncio.run(ttfb(base, key, model, concurrency=1, total=args.ttfb_samples))
    row["c1_p50"], row["c1_p99"] = pct(one, 50), pct(one, 99)
    many = asyncio.run(ttfb(base, key, model, concurrency=args.concurrency, total=args.ttfb_samples * 5))
    row["c50_p50"], row["c50_p99"] = pct(many, 50), pct(many, 99)
    cpu_before, started = _cpu_seconds(pid), time.monotonic()
    row["rps"] = asyncio.run(rps(base, key, model, concurrency=args.concurrency, seconds=args.seconds))
    if pid is not None:
        # The gateway's own CPU during the load: requests per CPU-second tells whether a second worker
        # scales the work linearly, whatever share of the cores the other programs took.
        row["cores"] = (_cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
        row["rps_per_core"] = row["rps"] / row["cores"]
    print(f"  {name}: " + ", ".join(f"{k}={v:.2f}" for k, v in row.items() if k != "target"), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples and 4 s of load per target")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    args.seconds = 4 if args.quick else 10
    args.ttfb_samples = 100 if args.quick else 300
    counts = [int(n) for n in args.workers.split(",") if n]
    if not shutil.which("wrk"):
        print(
            "warning: wrk is not installed (apt-get install wrk): requests/s comes from a Python client in one "
            "process, which saturates before two workers do; the scaling factor is then meaningless.",
            flush=True,
        )
    # SIGTERM unwinds like Ctrl-C, so the `finally` below stops every process the bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    rows = []
    try:
        bench.setup()
        rows.append(measure("direct", bench.sim_url + "/v1", "x", "sim-echo", args))
        for workers in counts:
            url, process = start_gateway(bench, workers)
            rows.append(measure(f"gateway x{workers}", url + "/v1", bench.key, "sim-fast", args, process.pid))
            stop_process(process, timeout=30)
    finally:
        bench.close()

    direct = rows[0]
    print()
    print(
        f"{'target':<14}{'req/s':>8}{'ttfb c1 p50':>13}{'p99':>8}{'+p50':>8}{'+p99':>8}"
        f"{'c' + str(args.concurrency) + ' p50':>10}{'p99':>8}{'+p50':>8}{'+p99':>8}{'cores':>7}{'req/s/core':>12}"
    )
    for row in rows:
        print(
            f"{row['target']:<14}{row['rps']:>8.0f}{row['c1_p50']:>11.2f}ms{row['c1_p99']:>6.2f}ms"
            f"{row['c1_p50'] - direct['c1_p50']:>6.2f}ms{row['c1_p99'] - direct['c1_p99']:>6.2f}ms"
            f"{row['c50_p50']:>8.1f}ms{row['c50_p99']:>6.1f}ms"
            f"{row['c50_p50'] - direct['c50_p50']:>6.1f}ms{row['c50_p99'] - direct['c50_p99']:>6.1f}ms"
            + (f"{row['cores']:>7.2f}{row['rps_per_core']:>12.0f}" if "cores" in row else "")
        )
    gateways = rows[1:]
    if len(gateways) > 1:
        base = gateways[0]
        for row in gateways[1:]:
            print(
                f"\nscaling {base['target']} -> {row['target']}: {row['rps'] / base['rps']:.2f}x requests/s, "
                f"{row['rps_per_core'] / base['rps_per_core']:.2f}x requests per gateway CPU-second"
            )
    print(
        f"\n(loopback, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} "
        f"usable cores shared by the load generator ({'wrk' if shutil.which('wrk') else 'Python'}), the gateway, "
        "the simulator, Redis and the Celery worker; TTFB from the Python raw client)"
    )


if __name__ == "__main__":
    main()
