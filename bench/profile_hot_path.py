"""Where one warm non-streamed request's CPU goes: py-spy samples the gateway under wrk load, and each
sample is charged to the hot-path stage its innermost recognisable frame belongs to.

Usage: python bench/profile_hot_path.py [--server uvicorn|daphne] [--seconds 20]
Needs py-spy (requirements-dev) and wrk. Prints a table: stage, share of the gateway's CPU samples, and
microseconds per request (share x CPU seconds / requests served).
"""

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_relay import Bench, rps_wrk  # noqa: E402
from tests.support.ports import stop_process  # noqa: E402

# (stage, pattern on "function (path:line)"), tried from the innermost frame outwards; first match wins.
STAGES = (
    ("metrics and request log", r"aigateway/(metrics|logs)\.py|\(logging/"),
    ("usage push (Redis)", r"accounts/usage\.py"),
    ("limits admit/settle (Redis)", r"accounts/limits\.py"),
    ("auth (key cache)", r"accounts/auth\.py"),
    ("route lookup", r"providers/(routing|route_rules)\.py|route_choose"),
    ("Redis client", r"\((redis|hiredis)/"),
    ("upstream client: httpx", r"\((httpx|httpcore)/|providers/upstream(_policy)?\.py|\((ipaddress|urllib)"),
    (
        "upstream client: aiohttp, transport",
        r"\((aiohttp|aiohappyeyeballs|yarl|multidict|propcache)/|providers/upstream_transport\.py",
    ),
    ("relay: body, dialect, usage event", r"streaming/(relay|meter|tokens)\.py|providers/dialects/|\(orjson"),
    ("edge: checks, body parse, views", r"streaming/(edge|views)\.py"),
    ("Django: request, URL resolve, response", r"\(django/"),
    (
        "API handler, ASGI wrappers (ours)",
        r"aigateway/(api_handler|asgi|server|cors|security_headers|shutdown)\.py|\((channels|asgiref)/",
    ),
    ("ASGI server (uvicorn/daphne/twisted)", r"\((uvicorn|daphne|twisted|autobahn|httptools)/"),
    ("event loop (asyncio, uvloop)", r"\((asyncio|uvloop)/"),
)
COMPILED = [(name, re.compile(pattern)) for name, pattern in STAGES]


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    return "other"


def charge(raw_path: Path) -> Counter:
    stages: Counter = Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stages[stage_of(stack.split(";"))] += int(count)
    return stages


def cpu_seconds(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="uvicorn")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    args.quick = True
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    bench = Bench(args)
    try:
        bench.setup()
        url, process = bench.start_gateway(args.server)
        base = url + "/v1"
        rps_wrk(base, bench.key, "sim-fast", concurrency=args.concurrency, seconds=3)  # warm
        raw = bench.tmp / "profile.txt"
        spy = subprocess.Popen(
            [py_spy, "record", "-p", str(process.pid), "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking",
             "-d", str(args.seconds + 2)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        cpu_before = cpu_seconds(process.pid)
        started = time.monotonic()
        rate = rps_wrk(base, bench.key, "sim-fast", concurrency=args.concurrency, seconds=args.seconds)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(process.pid) - cpu_before
        spy.wait(timeout=args.seconds + 30)
        stop_process(process)
    finally:
        bench.close()
    requests = rate * elapsed
    per_request_us = cpu / requests * 1e6
    stages = charge(raw)
    total = sum(stages.values())
    print(
        f"\n{args.server}: {rate:.0f} req/s, gateway CPU {cpu / elapsed:.2f} cores, {per_request_us:.0f} µs CPU/request"
    )
    print(f"{'stage':<40}{'share':>8}{'µs/request':>12}")
    for name, count in stages.most_common():
        share = count / total
        print(f"{name:<40}{share * 100:>7.1f}%{share * per_request_us:>12.0f}")


if __name__ == "__main__":
    main()
