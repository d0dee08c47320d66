"""Compare benchmark on loopback: time to first token of /v1/compare and the playground websocket against
/v1/chat/completions and the upstream simulator itself, and how evenly drip-fed chunks reach the client.

Usage: `python bench/bench_compare.py [--quick] [--server uvicorn,daphne] [--samples N] [--ttft-ms MS]`;
prints a Markdown table and writes the same numbers to var/bench-compare.json.
"""

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from itertools import pairwise
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_relay import Bench, pct  # noqa: E402
from tests.support.ports import stop_process  # noqa: E402

OUTPUT = ROOT / "var" / "bench-compare.json"
MESSAGES = [{"role": "user", "content": "Compare the answers, please"}]
MAX_TOKENS = 64
UPSTREAMS = ("sim-echo", "sim-mini", "sim-large", "sim-claude")
FAST = [f"bench-m{i}" for i in range(1, 5)]
DRIP = ["bench-drip", "bench-drip-2", "bench-drip-3", "bench-drip-4"]
DRIP_TOKENS, DRIP_INTERVAL_MS = 20, 100
LUMPED_MS = 1.0
SAMPLE_TIMEOUT = 30.0
# A column whose samples fail this many times in a row is dropped: a deterministic fault would only repeat.
MAX_STRAIGHT_FAILURES = 3

TTFT_ROWS = (
    ("direct", "simulator direct, chat stream (the limit)"),
    ("chat", "gateway /v1/chat/completions"),
    ("compare1", "gateway /v1/compare, 1 model"),
    ("compare4_first", "gateway /v1/compare, 4 models: first chunk"),
    ("compare4_all", "gateway /v1/compare, 4 models: all 4 first chunks"),
    ("ws1", "websocket, 1 model"),
    ("ws4_first", "websocket, 4 models: first chunk"),
    ("ws4_all", "websocket, 4 models: all 4 first chunks"),
)
GAP_ROWS = (("sse", "/v1/compare (SSE)"), ("ws", "websocket"))


class MeasurementError(Exception):
    pass


class Failures:
    """Failed samples per column: how many, and the first error."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.first: dict[str, str] = {}
        self.straight: dict[str, int] = {}

    def record(self, keys: list[str], exc: BaseException) -> bool:
        """Count a failure of `keys`; True when they failed too often in a row to keep measuring."""
        for key in keys:
            self.count[key] = self.count.get(key, 0) + 1
            self.first.setdefault(key, f"{type(exc).__name__}: {exc}")
            self.straight[key] = self.straight.get(key, 0) + 1
        return any(self.straight[key] >= MAX_STRAIGHT_FAILURES for key in keys)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self.straight[key] = 0

    def report(self, prefix: str) -> dict[str, dict]:
        return {
            f"{prefix}/{key}": {"failed_samples": n, "first_error": self.first[key]} for key, n in self.count.items()
        }


class CompareBench(Bench):
    def __init__(self, args) -> None:
        super().__init__(args)
        ttft = f"&ttft_ms={args.ttft_ms}" if args.ttft_ms else ""
        self.fast_upstreams = {name: f"{up}?tokens=16{ttft}" for name, up in zip(FAST, UPSTREAMS, strict=True)}
        self.drip_upstreams = {
            name: f"{up}?tokens={DRIP_TOKENS}&interval_ms={DRIP_INTERVAL_MS}{ttft}"
            for name, up in zip(DRIP, UPSTREAMS, strict=True)
        }

    def setup(self) -> None:
        # The embedded Redis logs to the stdout it inherits: a file keeps the printed table readable.
        sys.stdout.flush()
        saved = os.dup(1)
        with open(self.tmp / "redis.log", "wb") as log:
            os.dup2(log.fileno(), 1)
            try:
                super().setup()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
        from accounts.models import Tier
        from accounts.services import api_key_issue, service_user_get_or_create
        from providers.models import Deployment, Model, Provider

        provider = Provider.objects.get(name="sim")
        for name, upstream in {**self.fast_upstreams, **self.drip_upstreams}.items():
            model = Model.objects.create(name=name)
            Deployment.objects.create(model=model, provider=provider, upstream_model=upstream)
        # Limits left null (unlimited): a rate limit would measure the limiter, not the relay.
        tier = Tier.objects.create(name="bench-compare", max_compare_models=len(FAST))
        self.compare_key = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="bench-compare").plaintext


class SseClient:
    """Keep-alive HTTP/1.1 streamed POSTs on bare asyncio streams: far cheaper than httpx, so on a 2-core
    machine the time goes to the servers. Each SSE event is stamped when the bytes completing it arrive."""

    def __init__(self, base: str, key: str) -> None:
        url = httpx.URL(base)
        self.host, self.port, self.key = url.host, url.port, key
        self.reader = self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: dict) -> tuple[float, list[tuple[float, bytes]]]:
        """(perf_counter when the request went out, [(arrival, data of each event)])."""
        for attempt in (1, 2):
            reused = self.writer is not None
            try:
                return await self._post(path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server may close an idle keep-alive connection: one retry on a new one.
                self.close()
                if not reused or attempt == 2:
                    raise
            except BaseException:
                # A half-read answer leaves the connection unusable.
                self.close()
                raise
        raise AssertionError("unreachable")

    async def _post(self, path: str, body: dict) -> tuple[float, list[tuple[float, bytes]]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = orjson.dumps(body)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        started = time.perf_counter()
        self.writer.write(head.encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = head.lower()
        events: list[tuple[float, bytes]] = []
        buffer = b""
        if b"transfer-encoding: chunked" in headers:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                now = time.perf_counter()
                buffer += data[:-2]
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    events.extend((now, line[6:]) for line in frame.split(b"\n") if line.startswith(b"data: "))
        elif b"content-length:" in headers:
            length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
            buffer = await self.reader.readexactly(length)
        else:
            buffer = await self.reader.read()
            self.close()
        if b"connection: close" in headers:
            self.close()
        if status != 200:
            raise MeasurementError(f"HTTP {status} from {path}: {buffer[:300].decode(errors='replace')}")
        return started, events


class WsClient:
    """One persistent playground socket; runs go out one after another, as a browser tab sends them."""

    def __init__(self, base: str, key: str) -> None:
        self.url = base.replace("http://", "ws://", 1) + "/ws/playground/"
        self.key = key
        self.socket = None

    async def open(self) -> None:
        self.socket = await ws_connect(self.url, additional_headers={"Authorization": f"Bearer {self.key}"})
        ready = orjson.loads(await self.socket.recv())
        if ready.get("type") != "ready":
            raise MeasurementError(f"websocket answered {ready} instead of ready")

    async def close(self) -> None:
        socket, self.socket = self.socket, None
        if socket is not None:
            await socket.close()

    async def run(self, models: list[str]) -> tuple[float, list[tuple[float, dict]]]:
        try:
            if self.socket is None:
                await self.open()
            return await self._run(models)
        except BaseException:
            # A failed run leaves the socket in an unknown state: the next run opens a new one.
            if self.socket is not None:
                self.socket.transport.abort()
                self.socket = None
            raise

    async def _run(self, models: list[str]) -> tuple[float, list[tuple[float, dict]]]:
        frame = orjson.dumps({"type": "chat", "models": models, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
        events: list[tuple[float, dict]] = []
        started = time.perf_counter()
        await self.socket.send(frame.decode())
        while True:
            message = await self.socket.recv()
            now = time.perf_counter()
            event = orjson.loads(message)
            events.append((now, event))
            if event.get("type") == "complete" or (event.get("type") == "error" and "model" not in event):
                return started, events


async def compare_sse(client: SseClient, models: list[str]) -> tuple[float, list[tuple[float, dict]]]:
    started, raw = await client.post("/v1/compare", {"models": models, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    if not raw or raw[-1][1] != b"[DONE]":
        raise MeasurementError("the /v1/compare stream did not end with [DONE]")
    return started, [(t, orjson.loads(data)) for t, data in raw[:-1]]


def compare_checked(events: list[tuple[float, dict]], models: list[str]) -> dict[str, list[float]]:
    """Chunk arrival times of each model, after checking the run completed cleanly for every model."""
    errors = [event for _, event in events if event.get("type") == "error"]
    if errors:
        raise MeasurementError(f"error event: {errors[0]}")
    if not events or events[-1][1].get("type") != "complete":
        raise MeasurementError("the run ended without a complete event")
    chunks: dict[str, list[float]] = {model: [] for model in models}
    done = set()
    for arrival, event in events:
        if event.get("type") == "chunk":
            chunks[event["model"]].append(arrival)
        elif event.get("type") == "done":
            done.add(event["model"])
    missing = [model for model in models if model not in done or not chunks[model]]
    if missing:
        raise MeasurementError(f"no chunk or done event for {', '.join(missing)}")
    return chunks


def first_chunk_ms(started: float, chunks: dict[str, list[float]]) -> tuple[float, float]:
    """(ms to the first chunk of any model, ms until every model has had its first chunk)."""
    firsts = [times[0] for times in chunks.values()]
    return (min(firsts) - started) * 1000, (max(firsts) - started) * 1000


async def sample_chat(client: SseClient, model: str) -> float:
    started, raw = await client.post(
        "/v1/chat/completions", {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
    )
    first = None
    for arrival, data in raw:
        if data == b"[DONE]":
            continue
        chunk = orjson.loads(data)
        if "error" in chunk:
            raise MeasurementError(f"error in the chat stream of {model}: {chunk['error']}")
        # The first chunk carries only the role and an empty content: it is not a token yet.
        if first is None and any(choice.get("delta", {}).get("content") for choice in chunk.get("choices", [])):
            first = arrival
    if first is None or raw[-1][1] != b"[DONE]":
        raise MeasurementError(f"the chat stream of {model} had no content chunk or no [DONE]")
    return (first - started) * 1000


async def measure_ttft(bench: CompareBench, gateway: str, rounds: int, warmup: int) -> tuple[dict, Failures]:
    direct = SseClient(bench.sim_url, "x")
    http = SseClient(gateway, bench.compare_key)
    ws = WsClient(gateway, bench.compare_key)
    upstream = bench.fast_upstreams[FAST[0]]

    async def direct_sample():
        return {"direct": await sample_chat(direct, upstream)}

    async def chat_sample():
        return {"chat": await sample_chat(http, FAST[0])}

    async def compare1_sample():
        started, events = await compare_sse(http, FAST[:1])
        return {"compare1": first_chunk_ms(started, compare_checked(events, FAST[:1]))[0]}

    async def compare4_sample():
        started, events = await compare_sse(http, FAST)
        first, every = first_chunk_ms(started, compare_checked(events, FAST))
        return {"compare4_first": first, "compare4_all": every}

    async def ws1_sample():
        started, events = await ws.run(FAST[:1])
        return {"ws1": first_chunk_ms(started, compare_checked(events, FAST[:1]))[0]}

    async def ws4_sample():
        started, events = await ws.run(FAST)
        first, every = first_chunk_ms(started, compare_checked(events, FAST))
        return {"ws4_first": first, "ws4_all": every}

    variants = [
        (direct_sample, ["direct"]),
        (chat_sample, ["chat"]),
        (compare1_sample, ["compare1"]),
        (compare4_sample, ["compare4_first", "compare4_all"]),
        (ws1_sample, ["ws1"]),
        (ws4_sample, ["ws4_first", "ws4_all"]),
    ]
    samples: dict[str, list[float]] = {key: [] for key, _ in TTFT_ROWS}
    failures = Failures()
    try:
        for index in range(warmup + rounds):
            if not variants:
                break
            # Round-robin with a rotating start: machine noise and cache warmth hit every variant alike.
            shift = index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                sample, keys = variant
                try:
                    async with asyncio.timeout(SAMPLE_TIMEOUT):
                        measured = await sample()
                # A failed sample is counted and the round goes on: one broken column must not hide the others.
                except Exception as exc:
                    if failures.record(keys, exc):
                        variants.remove(variant)
                    continue
                failures.succeeded(keys)
                if index >= warmup:
                    for key, value in measured.items():
                        samples[key].append(value)
    finally:
        direct.close()
        http.close()
        await ws.close()
    return samples, failures


async def measure_gaps(bench: CompareBench, gateway: str, runs: int) -> tuple[dict, Failures]:
    http = SseClient(gateway, bench.compare_key)
    ws = WsClient(gateway, bench.compare_key)
    gaps: dict[str, list[float]] = {"sse": [], "ws": []}
    failures = Failures()

    async def sse_run():
        return await compare_sse(http, DRIP)

    transports = {"sse": sse_run, "ws": lambda: ws.run(DRIP)}
    timeout = SAMPLE_TIMEOUT + DRIP_TOKENS * DRIP_INTERVAL_MS / 1000
    try:
        for _ in range(runs):
            for name, run in list(transports.items()):
                try:
                    async with asyncio.timeout(timeout):
                        started, events = await run()
                    chunks = compare_checked(events, DRIP)
                except Exception as exc:
                    if failures.record([name], exc):
                        del transports[name]
                    continue
                short = [model for model, times in chunks.items() if len(times) != DRIP_TOKENS]
                if short:
                    failures.record([name], MeasurementError(f"fewer than {DRIP_TOKENS} chunks from {short}"))
                    continue
                failures.succeeded([name])
                for times in chunks.values():
                    gaps[name].extend((later - earlier) * 1000 for earlier, later in pairwise(times))
    finally:
        http.close()
        await ws.close()
    return gaps, failures


def ttft_stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"samples": len(values), "p50_ms": round(pct(values, 50), 3), "p99_ms": round(pct(values, 99), 3)}


def gap_stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {
        "gaps": len(values),
        "p5_ms": round(pct(values, 5), 3),
        "p50_ms": round(pct(values, 50), 3),
        "p95_ms": round(pct(values, 95), 3),
        "max_ms": round(max(values), 3),
        "lumped_share": round(sum(v < LUMPED_MS for v in values) / len(values), 4),
    }


def measure_server(bench: CompareBench, server: str, args) -> dict:
    url, process = bench.start_gateway(server)
    try:
        print(f"[{server}] time to first token: {args.samples} rounds ...", flush=True)
        ttft, ttft_failures = asyncio.run(measure_ttft(bench, url, args.samples, args.warmup))
        print(f"[{server}] inter-chunk gaps: {args.drip_runs} drip runs per transport ...", flush=True)
        gaps, gap_failures = asyncio.run(measure_gaps(bench, url, args.drip_runs))
    finally:
        stop_process(process)
    result = {
        "ttft": {key: ttft_stats(ttft[key]) for key, _ in TTFT_ROWS},
        "gaps": {key: gap_stats(gaps[key]) for key, _ in GAP_ROWS},
        "failures": {**ttft_failures.report("ttft"), **gap_failures.report("gaps")},
    }
    for section, rows in (("ttft", TTFT_ROWS), ("gaps", GAP_ROWS)):
        for key, _ in rows:
            if result[section][key] is None:
                result["failures"].setdefault(f"{section}/{key}", {"failed_samples": 0, "first_error": "no samples"})
    return result


def markdown(results: dict, meta: dict) -> str:
    lines = []
    for server, result in results.items():
        direct = result["ttft"]["direct"]
        lines += [
            f"### Time to first token, gateway under {server} (upstream ttft {meta['upstream_ttft_ms']} ms, "
            f"16 tokens, {meta['samples']} round-robin rounds)",
            "",
            "| path | samples | p50 ms | p99 ms | added p50 ms | added p99 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, label in TTFT_ROWS:
            row = result["ttft"][key]
            if row is None:
                lines.append(f"| {label} | failed | | | | |")
                continue
            if key == "direct" or direct is None:
                added = "| - | - |"
            else:
                added = f"| {row['p50_ms'] - direct['p50_ms']:.2f} | {row['p99_ms'] - direct['p99_ms']:.2f} |"
            lines.append(f"| {label} | {row['samples']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} {added}")
        lines += [
            "",
            f"### Inter-chunk gaps, gateway under {server} (4 models x {DRIP_TOKENS} tokens {DRIP_INTERVAL_MS} ms "
            f"apart, {meta['drip_runs']} runs per transport)",
            "",
            f"| transport | gaps | p5 ms | p50 ms | p95 ms | max ms | lumped (< {LUMPED_MS:g} ms) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, label in GAP_ROWS:
            row = result["gaps"][key]
            if row is None:
                lines.append(f"| {label} | failed | | | | | |")
                continue
            lines.append(
                f"| {label} | {row['gaps']} | {row['p5_ms']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} "
                f"| {row['max_ms']:.1f} | {row['lumped_share']:.1%} |"
            )
        for name, problem in result["failures"].items():
            lines.append(
                f"\nFAILED {name}: {problem['failed_samples']} failed samples, first: {problem['first_error']}"
            )
        lines.append("")
    lines.append(
        f"(loopback, {meta['cpus']} cores; client, gateway, worker and simulator share the machine; "
        f"added = gateway row minus the direct row)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and drip runs (about 30 s)")
    parser.add_argument("--server", default="uvicorn", help="comma-separated: uvicorn, daphne")
    parser.add_argument("--samples", type=int, help="measured rounds of every variant (default 200, quick 100)")
    parser.add_argument("--drip-runs", type=int, help="drip runs per transport (default 8, quick 3)")
    parser.add_argument("--ttft-ms", type=int, default=0, help="upstream delay before the first token")
    args = parser.parse_args()
    args.samples = args.samples or (100 if args.quick else 200)
    args.drip_runs = args.drip_runs or (3 if args.quick else 8)
    args.warmup = 5 if args.quick else 10
    servers = [name for name in args.server.split(",") if name]
    # SIGTERM unwinds like Ctrl-C, so the `finally` below stops every process the bench started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    bench = CompareBench(args)
    results: dict[str, dict] = {}
    try:
        bench.setup()
        for server in servers:
            results[server] = measure_server(bench, server, args)
    finally:
        bench.close()
    meta = {
        "samples": args.samples,
        "warmup_rounds": args.warmup,
        "drip_runs": args.drip_runs,
        "upstream_ttft_ms": args.ttft_ms,
        "cpus": os.cpu_count(),
        "fast_models": bench.fast_upstreams,
        "drip_models": bench.drip_upstreams,
        "seconds": round(time.monotonic() - began, 1),
    }
    print()
    print(markdown(results, meta))
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_bytes(orjson.dumps({"meta": meta, "servers": results}, option=orjson.OPT_INDENT_2))
    failed = any(result["failures"] for result in results.values())
    if failed:
        print(f"\nsome measurements failed; process logs are in {bench.tmp}")
    else:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    print(f"wrote {OUTPUT.relative_to(ROOT)} in {meta['seconds']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
