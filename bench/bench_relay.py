"""Relay benchmark on loopback: the gateway (under uvicorn and daphne) against the direct upstream
simulator (the limit) and LiteLLM's proxy, all in one run against one simulator.

Measures time to first byte p50/p99 of streamed completions at concurrency 1 and 50,
non-streamed requests per second at saturation, and the memory of the relay process holding
500 open streams. Usage: `python bench/bench_relay.py [--quick] [--no-litellm]`.
"""

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.goals import (  # noqa: E402
    FanoutUpstream,
    baseline_check,
    baseline_write,
    fanout_latencies,
    ttfb_httpx,
)
from tests.support.gateway import gateway_command  # noqa: E402
from tests.support.ports import free_port, stop_process, wait_http  # noqa: E402

LITELLM_VENV = ROOT / "var" / "litellm-venv"
LITELLM_VERSION = "1.106.2"
MESSAGES = [{"role": "user", "content": "Benchmark the relay, please"}]


def pct(values, p):
    values = sorted(values)
    index = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[index]


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        self.processes: list[subprocess.Popen] = []

    def spawn(self, command, env=None, log="proc") -> subprocess.Popen:
        out = open(self.tmp / f"{log}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            command, cwd=ROOT, env=env or os.environ.copy(), stdout=out, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)

    def setup(self) -> None:
        from aigateway.embedded_redis import redis_server_start

        socket_path = self.tmp / "redis.sock"
        self.processes.append(redis_server_start(socket_path=socket_path, data_dir=self.tmp))
        self.env = dict(os.environ)
        self.env.update(
            DATABASE_URL=f"sqlite:///{self.tmp / 'db.sqlite3'}",
            REDIS_URL=f"unix://{socket_path}",
            DJANGO_SETTINGS_MODULE="aigateway.settings",
            # INFO: every feature on, the per-request log line included (to the gateway's log file).
            DJANGO_LOG_LEVEL="INFO",
        )
        os.environ.update({k: self.env[k] for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")})
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        sim_port = free_port()
        sim = self.spawn([sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)], self.env, "simulator")
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(self.sim_url + "/_sim/health", process=sim)

        from accounts.models import Tier
        from accounts.services import api_key_issue, service_user_get_or_create
        from providers.models import Deployment, Model, Provider

        provider = Provider(name="sim", dialect="openai", base_url=self.sim_url + "/v1", max_connections=1000)
        provider.api_key = "sk-upstream"
        provider.save()
        # The fan-out upstream (bench/goals.py) runs inside this process while it is measured.
        self.fanout_port = free_port()
        fanout = Provider(name="fanout", dialect="openai", base_url=f"http://127.0.0.1:{self.fanout_port}/v1")
        fanout.api_key = "sk-upstream"
        fanout.save()
        Deployment.objects.create(model=Model.objects.create(name="fanout"), provider=fanout, upstream_model="fanout")
        for name, upstream, kinds in (
            ("sim-fast", "sim-echo", ["chat"]),
            ("sim-hold", "sim-echo?tokens=150&interval_ms=1000", ["chat"]),
            ("embed", "sim-embed", ["embeddings"]),
        ):
            model = Model.objects.create(name=name, kinds=kinds)
            Deployment.objects.create(model=model, provider=provider, upstream_model=upstream)
        # Every limit set (so each request is admitted, leased and settled in Redis), none ever reached.
        tier = Tier.objects.create(
            name="bench", rpm=100_000_000, tpm=10**12, max_concurrent=100_000, daily_tokens=10**15
        )
        self.key = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="bench").plaintext
        # The usage pipeline runs as in production: a worker drains the queue while we measure.
        self.spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "aigateway",
                "worker",
                "--beat",
                "--pool",
                "solo",
                "-l",
                "warning",
                "-s",
                str(self.tmp / "beat"),
            ],
            self.env,
            "worker",
        )

    def start_gateway(self, server: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        command = gateway_command(server, port)
        process = self.spawn(command, self.env, f"gateway-{server}")
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", process=process)
        return url, process

    def start_litellm(self) -> tuple[str, subprocess.Popen] | None:
        binary = LITELLM_VENV / "bin" / "litellm"
        if not binary.exists():
            print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
            subprocess.run(
                [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True
            )
        config = self.tmp / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            + "".join(
                f"  - model_name: {name}\n    litellm_params:\n      model: openai/{upstream}\n"
                f"      api_base: {self.sim_url}/v1\n      api_key: sk-upstream\n"
                for name, upstream in (("sim-fast", "sim-echo"), ("sim-hold", "sim-echo?tokens=150&interval_ms=1000"))
            )
        )
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
        self.litellm_key = "sk-bench-" + os.urandom(16).hex()
        env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_MASTER_KEY=self.litellm_key)
        process = self.spawn(
            [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            env,
            "litellm",
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health/liveliness", timeout=180, process=process)
        return url, process


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: costs far less CPU than httpx, so on a
    2-core machine the measurement is of the servers, not of the client."""

    def __init__(self, base: str, key: str, endpoint: str = "/chat/completions") -> None:
        url = httpx.URL(base)
        self.host, self.port, self.path = url.host, url.port, url.path.rstrip("/")
        self.key = key
        self.endpoint = endpoint
        self.reader = self.writer = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def request_bytes(self, body: dict) -> bytes:
        payload = orjson.dumps(body)
        head = (
            f"POST {self.path}{self.endpoint} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    async def call(self, body: dict) -> tuple[float, float]:
        """(ms to the first body byte, ms to the end) of one request."""
        try:
            return await self._call(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed an idle keep-alive connection: one retry on a new one.
            await self.close()
            self.writer = None
            return await self._call(body)

    async def _call(self, body: dict) -> tuple[float, float]:
        if self.writer is None:
            await self.connect()
        started = time.perf_counter()
        self.writer.write(self.request_bytes(body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = head.lower()
        first = None
        if b"transfer-encoding: chunked" in headers:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if first is None:
                    first = time.perf_counter()
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = int(headers.split(b"content-length: ")[1].split(b"\r\n")[0])
            await self.reader.readexactly(1)
            first = time.perf_counter()
            await self.reader.readexactly(length - 1)
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {self.host}:{self.port}")
        if b"connection: close" in headers:
            await self.close()
            self.writer = None
        return (first - started) * 1000, (time.perf_counter() - started) * 1000


async def ttfb(base: str, key: str, model: str, *, concurrency: int, total: int) -> list[float]:
    body = {"model": model, "messages": MESSAGES, "stream": True}
    clients = [RawClient(base, key) for _ in range(concurrency)]
    for client in clients:
        for _ in range(3):
            await client.call(body)
    results: list[float] = []
    queue = iter(range(total))

    async def worker(client):
        for _ in queue:
            results.append((await client.call(body))[0])

    await asyncio.gather(*(worker(c) for c in clients))
    for client in clients:
        await client.close()
    return results


async def embeddings_bench(base: str, key: str, model: str, *, samples: int, seconds: float) -> tuple:
    """Embeddings of a short text: latency p50/p99 at concurrency 1, then requests per second at 50."""
    body = {"model": model, "input": "The gateway relays embeddings too", "encoding_format": "float"}
    client = RawClient(base, key, endpoint="/embeddings")
    latencies = [(await client.call(body))[1] for _ in range(samples)]
    await client.close()
    throughput = await rps_raw(base, key, body, endpoint="/embeddings", concurrency=50, seconds=seconds)
    return pct(latencies, 50), pct(latencies, 99), throughput


async def rps(base: str, key: str, model: str, *, concurrency: int, seconds: float) -> float:
    """Non-streamed requests per second at saturation (wrk when installed, else the raw client)."""
    if shutil.which("wrk"):
        return rps_wrk(base, key, model, concurrency=concurrency, seconds=seconds)
    return await rps_raw(base, key, {"model": model, "messages": MESSAGES}, concurrency=concurrency, seconds=seconds)


async def rps_raw(
    base: str, key: str, body: dict, *, endpoint: str = "/chat/completions", concurrency: int, seconds: float
) -> float:
    """Requests per second of `body` at `endpoint` with `concurrency` keep-alive raw clients."""
    clients = [RawClient(base, key, endpoint=endpoint) for _ in range(concurrency)]
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(client):
        nonlocal done
        while time.perf_counter() < deadline:
            await client.call(body)
            done += 1

    await asyncio.gather(*(worker(c) for c in clients))
    for client in clients:
        await client.close()
    return done / (time.perf_counter() - started)


def wrk_script(key: str, model: str, lua: str) -> Path:
    """A wrk script posting a non-streamed completion of `model` with `key`, plus `lua`."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    body = orjson.dumps({"model": model, "messages": MESSAGES}).decode()
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n' + lua
    )
    return script


def rps_wrk(base: str, key: str, model: str, *, concurrency: int, seconds: float) -> float:
    script = wrk_script(
        key,
        model,
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("non2xx=%d\\n", summary.errors.status))\n'
        "end\n",
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "-s", str(script), base + "/chat/completions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    if "non2xx=0" not in out:
        raise RuntimeError(f"wrk saw non-2xx answers from {base}:\n{out}")
    return float(out.split("Requests/sec:")[1].split()[0])


async def memory_with_open_streams(base: str, key: str, pid: int, *, streams: int) -> tuple[float, float]:
    """RSS (MiB) of the relay process idle, and while holding `streams` open streams."""
    process = psutil.Process(pid)
    rss = lambda: sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20  # noqa: E731
    idle = rss()
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    opened = asyncio.Event()
    count = 0
    body = {"model": "sim-hold", "messages": MESSAGES, "stream": True}

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        # Connects are staggered: a burst of 500 SYNs overflows a small listen backlog (daphne's is 50)
        # and the kernel's retry back-off, not the relay, would then decide how long opening takes.
        connecting = asyncio.Semaphore(25)

        async def hold():
            nonlocal count
            await connecting.acquire()
            async with client.stream(
                "POST", base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                # Keep the iterator: dropping a half-read one closes the connection.
                chunks = response.aiter_raw()
                await anext(chunks)
                connecting.release()
                count += 1
                if count == streams:
                    opened.set()
                await asyncio.sleep(3600)

        tasks = [asyncio.create_task(hold()) for _ in range(streams)]
        try:
            try:
                await asyncio.wait_for(opened.wait(), 90)
            except TimeoutError:
                raise RuntimeError(f"only {count} of {streams} streams opened within 90 s") from None
            await asyncio.sleep(1.0)
            loaded = rss()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return idle, loaded


async def fanout(port: int, base: str | None, key: str, streams: int) -> list[float]:
    upstream = FanoutUpstream()
    await upstream.start(port)
    try:
        return await fanout_latencies(upstream, base or f"http://127.0.0.1:{port}/v1", key, "fanout", streams)
    finally:
        await upstream.close()


def _wrk_ms(value: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    raise ValueError(f"unreadable wrk latency {value!r}")


def latency_at_rate(base: str, key: str, model: str, *, rate: float, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) of non-streamed requests at about `rate` per second: wrk's connections each wait
    `connections / rate` between requests (its Lua `delay`), far below saturation a near-constant rate.
    wrk measures each request from send to answer, in C, so the load generator's own CPU stays small."""
    connections = 16
    script = wrk_script(key, model, f"function delay() return {connections * 1000 / rate:.3f} end\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script),
         base + "/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    script.unlink()
    distribution = out.split("Latency Distribution")[1]
    p50 = _wrk_ms(distribution.split("50%")[1].split()[0])
    p99 = _wrk_ms(distribution.split("99%")[1].split()[0])
    return p50, p99


def run_goals(row: dict, name: str, base: str, key: str, bench, args) -> None:
    """The hot-path goal figures: ordinary-client TTFB, fan-out latency, p99 at half of saturation (with
    the direct upstream's p99 at the same rate, measured right after, to subtract)."""
    direct = name == "direct"
    model = "sim-echo" if direct else "sim-fast"
    httpx_ttfb = asyncio.run(ttfb_httpx(base, key, model, total=100 if args.quick else 300))
    row["ttfb_httpx_p50"] = pct(httpx_ttfb, 50)
    latencies = asyncio.run(fanout(bench.fanout_port, None if direct else base, key, 3 if args.quick else 8))
    row["fanout_p50"], row["fanout_p99"] = pct(latencies, 50), pct(latencies, 99)
    if not direct and not shutil.which("wrk"):
        print("  (p99 at half of saturation needs wrk: apt-get install wrk)", flush=True)
    elif not direct:
        rate = row["rps"] / 2
        seconds = 3 if args.quick else 6
        row["half_rate"] = rate
        row["half_p50"], row["half_p99"] = latency_at_rate(base, key, model, rate=rate, seconds=seconds)
        row["half_direct_p50"], row["half_direct_p99"] = latency_at_rate(
            bench.sim_url + "/v1", "x", "sim-echo", rate=rate, seconds=seconds
        )


def run_target(name, base, key, pid, args, bench=None) -> dict:
    total1 = 100 if args.quick else 300
    total50 = 500 if args.quick else 2000
    row = {"target": name}
    one = asyncio.run(ttfb(base, key, "sim-fast" if name != "direct" else "sim-echo", concurrency=1, total=total1))
    row["ttfb_c1_p50"], row["ttfb_c1_p99"] = pct(one, 50), pct(one, 99)
    fifty = asyncio.run(ttfb(base, key, "sim-fast" if name != "direct" else "sim-echo", concurrency=50, total=total50))
    row["ttfb_c50_p50"], row["ttfb_c50_p99"] = pct(fifty, 50), pct(fifty, 99)
    row["rps"] = asyncio.run(
        rps(base, key, "sim-fast" if name != "direct" else "sim-echo", concurrency=50, seconds=5 if args.quick else 10)
    )
    if bench is not None:
        run_goals(row, name, base, key, bench, args)
    if name != "litellm-proxy":
        row["emb_p50"], row["emb_p99"], row["emb_rps"] = asyncio.run(
            embeddings_bench(
                base, key, "embed" if name != "direct" else "sim-embed", samples=total1, seconds=3 if args.quick else 6
            )
        )
    if pid is not None and not args.no_memory:
        try:
            idle, loaded = asyncio.run(memory_with_open_streams(base, key, pid, streams=500))
            row["rss_idle_mib"], row["rss_500_mib"] = idle, loaded
        except RuntimeError as exc:
            print(f"  {name}: memory test failed: {exc}", flush=True)
    print(f"  {name}: {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--servers", default="uvicorn,daphne")
    parser.add_argument(
        "--write-baseline", action="store_true", help="store this run's goal figures as bench/baseline.json"
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the `finally` below stops every process the bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    rows = []
    try:
        bench.setup()
        rows.append(run_target("direct", bench.sim_url + "/v1", "x", None, args, bench))
        for server in filter(None, args.servers.split(",")):
            url, process = bench.start_gateway(server)
            rows.append(run_target(f"gateway/{server}", url + "/v1", bench.key, process.pid, args, bench))
            stop_process(process)
        if not args.no_litellm:
            started = bench.start_litellm()
            url, process = started
            rows.append(run_target("litellm-proxy", url + "/v1", bench.litellm_key, process.pid, args))
            stop_process(process)
    finally:
        bench.close()
    direct = rows[0]
    print()
    print(
        f"{'target':<18}{'ttfb c1 p50':>12}{'c1 p99':>9}{'c1 +p50':>9}{'c50 p50':>9}{'c50 p99':>9}"
        f"{'req/s':>9}{'RSS idle':>10}{'RSS 500':>9}"
    )
    for row in rows:
        added = row["ttfb_c1_p50"] - direct["ttfb_c1_p50"]
        print(
            f"{row['target']:<18}{row['ttfb_c1_p50']:>10.2f}ms{row['ttfb_c1_p99']:>7.2f}ms{added:>7.2f}ms"
            f"{row['ttfb_c50_p50']:>7.1f}ms{row['ttfb_c50_p99']:>7.1f}ms{row['rps']:>9.0f}"
            f"{row.get('rss_idle_mib', float('nan')):>8.0f}Mi{row.get('rss_500_mib', float('nan')):>7.0f}Mi"
        )
    print(f"\n{'embeddings':<18}{'c1 p50':>10}{'c1 p99':>9}{'c1 +p50':>9}{'req/s c50':>11}")
    for row in rows:
        if "emb_p50" in row:
            added = row["emb_p50"] - direct["emb_p50"]
            print(
                f"{row['target']:<18}{row['emb_p50']:>8.2f}ms{row['emb_p99']:>7.2f}ms{added:>7.2f}ms"
                f"{row['emb_rps']:>11.0f}"
            )
    print(
        f"\n(loopback, {os.cpu_count()} cores; client, relay and simulator share the machine; "
        f"median of c1 added TTFB is the gateway's own cost)"
    )
    figures = goals_report(rows)
    if args.write_baseline:
        baseline_write(figures, f"bench_relay.py {'--quick ' if args.quick else ''}run of {time.strftime('%Y-%m-%d')}")
        print(f"\nbaseline written: {len(figures)} figures")
        return
    problems = baseline_check(figures)
    if problems:
        print("\nREGRESSION against bench/baseline.json (more than 20% worse):", *problems, sep="\n  ")
        sys.exit(1)
    print("\nno figure regressed by more than 20% against bench/baseline.json")


GOALS = (
    # (figure, label, goal, unit; higher is better for req/s)
    ("added_ttfb_httpx_p50", "added TTFB p50, httpx client", 1.0, "ms"),
    ("added_ttfb_raw_p50", "added TTFB p50, raw socket client", 0.5, "ms"),
    ("rps", "non-streamed req/s, one worker", 3000, "req/s"),
    ("added_p99_half", "added p99 at half of saturation", 10.0, "ms"),
    ("fanout_added_p50", "stream fan-out, added p50 per event", None, "ms"),
    ("fanout_added_p99", "stream fan-out, added p99 per event", None, "ms"),
)


def goals_report(rows: list[dict]) -> dict[str, float]:
    """Print each server's goal figures against the goals; return them flat, for the baseline."""
    direct = rows[0]
    figures: dict[str, float] = {}
    measured = [row for row in rows[1:] if "half_p99" in row]
    print(f"\n{'hot-path goals':<40}" + "".join(f"{row['target']:>18}" for row in measured) + f"{'goal':>10}")
    per_server = {}
    for row in measured:
        server = row["target"].split("/")[-1]
        per_server[server] = {
            "added_ttfb_httpx_p50": row["ttfb_httpx_p50"] - direct["ttfb_httpx_p50"],
            "added_ttfb_raw_p50": row["ttfb_c1_p50"] - direct["ttfb_c1_p50"],
            "rps": row["rps"],
            "added_p99_half": row["half_p99"] - row["half_direct_p99"],
            "fanout_added_p50": row["fanout_p50"] - direct["fanout_p50"],
            "fanout_added_p99": row["fanout_p99"] - direct["fanout_p99"],
        }
    for key, label, goal, unit in GOALS:
        cells = ""
        for values in per_server.values():
            value = values[key]
            met = "" if goal is None else (" ok" if (value >= goal if unit == "req/s" else value <= goal) else " --")
            cells += f"{value:>13.{0 if unit == 'req/s' else 2}f}{unit if unit != 'req/s' else '':<2}{met:<3}"
        print(f"{label:<40}{cells}{'' if goal is None else goal:>10}")
    for server, values in per_server.items():
        for key, value in values.items():
            figures[f"{server}_{key}" if key != "rps" else f"{server}_rps"] = round(value, 3)
    return figures


if __name__ == "__main__":
    main()
