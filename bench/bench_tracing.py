"""What OpenTelemetry tracing costs a request, on loopback: three gateways (uvicorn) - tracing off (the default),
on with every trace sampled, on with a tenth sampled (OTEL_TRACES_SAMPLER=traceidratio) - exporting over OTLP/HTTP
to a receiver process of their own (tests.support.otlp), against the simulator, embedded Redis and a Celery worker.

Takes turns between them, so drift hits all alike: non-streamed latency and streamed time to first byte at
concurrency 1 (p50, p99), non-streamed requests per second at concurrency 1 and at saturation (50). Then, in
process, the tracing hooks of one relayed request (server span, attempt span, traceparent, attributes, ends): off,
on and exported, on and sampled out. Usage: `python bench/bench_tracing.py [--quick]`.
"""

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_relay import MESSAGES, Bench, RawClient, pct, rps_raw  # noqa: E402
from tests.support.gateway import gateway_command  # noqa: E402
from tests.support.ports import free_port, stop_process, wait_http  # noqa: E402

# The receiver runs in a process of its own: decoding the exports must not slow this process's clients. Each
# line read from its stdin answers with the spans received so far by service name, as JSON.
RECEIVER = """
import collections, json, sys
from tests.support.otlp import OtlpReceiver
receiver = OtlpReceiver().start()
print(receiver.endpoint, flush=True)
for _ in sys.stdin:
    print(json.dumps(collections.Counter(s.resource["service.name"] for s in receiver.spans())), flush=True)
"""


def start_gateway(bench: Bench, name: str, **env) -> str:
    port = free_port()
    process = bench.spawn(gateway_command("uvicorn", port), {**bench.env, **env}, f"gateway-{name}")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", process=process)
    return url


async def latencies(base: str, key: str, *, stream: bool, total: int) -> list[tuple[float, float]]:
    """(ms to the first body byte, ms to the end) of `total` calls at concurrency 1."""
    client = RawClient(base + "/v1", key)
    body = {"model": "sim-fast", "messages": MESSAGES, "stream": stream}
    for _ in range(5):
        await client.call(body)
    samples = [await client.call(body) for _ in range(total)]
    await client.close()
    return samples


async def measured(urls: dict[str, str], key: str, *, rounds: int, calls: int, seconds: float) -> dict:
    results: dict = {name: {"whole": [], "stream": [], "rps1": [], "rps50": [], "requests": 0} for name in urls}
    body = {"model": "sim-fast", "messages": MESSAGES}
    for index in range(rounds):
        order = list(urls) if index % 2 == 0 else list(reversed(urls))
        for name in order:
            base, got = urls[name] + "/v1", results[name]
            got["whole"] += await latencies(urls[name], key, stream=False, total=calls)
            got["stream"] += await latencies(urls[name], key, stream=True, total=calls)
            got["rps1"].append(await rps_raw(base, key, body, concurrency=1, seconds=seconds))
            got["rps50"].append(await rps_raw(base, key, body, concurrency=50, seconds=seconds))
            got["requests"] += 2 * (calls + 5) + round((got["rps1"][-1] + got["rps50"][-1]) * seconds)
            # A traced gateway's exporter works through its queue after the window: not in the next one's.
            await asyncio.sleep(1.0)
    return results


def _request_objects():
    """Stand-ins for what the hooks read of a request, its relay call and its route (plain attributes)."""
    provider = SimpleNamespace(name="sim", base_url="http://127.0.0.1:9/v1")
    route = SimpleNamespace(provider=provider, upstream_model="sim-echo", deployment_id=1)
    request = SimpleNamespace(
        path="/v1/chat/completions",
        method="POST",
        headers={},
        gateway_request_id="req_bench",
        gateway_body={"model": "sim-fast"},
        gateway_key=None,
    )
    call = SimpleNamespace(
        trace=None,
        operation="chat",
        requested_model="",
        model="sim-fast",
        stream=False,
        ctx=SimpleNamespace(key_id=1, team_id=None),
        body={"model": "sim-fast", "messages": MESSAGES, "max_tokens": 64},
        run_id="",
        request_id="req_bench",
        attempts=1,
        route_label="default",
        route=route,
        finish_reason="stop",
        cache_result="",
    )
    event = {
        "status_code": 200,
        "error_type": "",
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "tokens_estimated": False,
        "ttfb_ms": 2.5,
        "ttfb_upstream_ms": 2.1,
        "cost": "0",
    }
    return request, call, route, event


async def hooks_cost(samples: int) -> float:
    """Microseconds of the tracing hooks of one relayed request, each request in a task of its own (as served)."""
    from streaming.tracing import (
        request_trace_answered,
        request_trace_start,
        trace_attempt_answered,
        trace_attempt_start,
        trace_call_finish,
        trace_call_start,
    )

    request, call, route, event = _request_objects()
    response = SimpleNamespace(status_code=200)

    async def one() -> None:
        trace = request_trace_start(request, view="chat_completions")
        call.trace = None
        trace_call_start(call)
        trace_attempt_start(call, route, {"content-type": "application/json"})
        trace_attempt_answered(call, 200)
        trace_call_finish(call, event)
        request_trace_answered(trace, request, response, endpoint="chat.completions")

    async def bare() -> None:
        pass

    async def timed(work) -> float:
        started = time.perf_counter()
        for _ in range(samples):
            await asyncio.create_task(work())
        return (time.perf_counter() - started) / samples * 1e6

    await timed(one)
    runs = [(await timed(one)) - (await timed(bare)) for _ in range(5)]
    return statistics.median(runs)


def in_process(endpoint: str, samples: int) -> dict[str, float]:
    """The hooks' cost with tracing off, on (spans exported to `endpoint`), and on with every trace sampled out."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from aigateway import tracing as sdk

    costs = {"off": asyncio.run(hooks_cost(samples * 5))}
    for name, sampler in (("on", None), ("sampled out", ALWAYS_OFF)):
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces")))
        sdk.tracer = provider.get_tracer("aigateway")
        costs[name] = asyncio.run(hooks_cost(samples))
        provider.shutdown()
    sdk.tracer = None
    return costs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.no_memory = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rounds, calls, seconds = (2, 200, 3.0) if args.quick else (4, 500, 5.0)
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    endpoint = receiver.stdout.readline().strip()
    bench = Bench(args)
    try:
        bench.setup()
        urls = {
            "off": start_gateway(bench, "off"),
            "on": start_gateway(bench, "on", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="on"),
            "on 10%": start_gateway(
                bench,
                "sampled",
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_SERVICE_NAME="on 10%",
                OTEL_TRACES_SAMPLER="traceidratio",
                OTEL_TRACES_SAMPLER_ARG="0.1",
            ),
        }
        results = asyncio.run(measured(urls, bench.key, rounds=rounds, calls=calls, seconds=seconds))
        for process in bench.processes[-3:]:
            stop_process(process)  # each exports what it still holds as it stops
        receiver.stdin.write("\n")
        receiver.stdin.flush()
        spans = json.loads(receiver.stdout.readline())
        costs = in_process(endpoint, 5000 if args.quick else 20000)
    finally:
        bench.close()
        receiver.communicate(timeout=30)
    print(f"\nconcurrency 1, {rounds} rounds of {calls} calls each; rps over {seconds:g} s windows (median)")
    print(f"{'tracing':<9}{'whole p50':>10}{'p99':>8}{'stream ttfb p50':>17}{'p99':>8}{'rps c=1':>10}{'rps c=50':>10}")
    for name, got in results.items():
        whole = [total for _, total in got["whole"]]
        ttfb = [first for first, _ in got["stream"]]
        print(
            f"{name:<9}{pct(whole, 50):>10.3f}{pct(whole, 99):>8.3f}{pct(ttfb, 50):>17.3f}{pct(ttfb, 99):>8.3f}"
            f"{statistics.median(got['rps1']):>10.0f}{statistics.median(got['rps50']):>10.0f}"
        )
    off = results["off"]
    for name in ("on", "on 10%"):
        on = results[name]
        whole_delta = pct([t for _, t in on["whole"]], 50) - pct([t for _, t in off["whole"]], 50)
        ratio1 = statistics.median(on["rps1"]) / statistics.median(off["rps1"])
        ratio50 = statistics.median(on["rps50"]) / statistics.median(off["rps50"])
        print(
            f"{name} - off: {whole_delta * 1000:+.0f} us whole p50; rps {name}/off c=1 {ratio1:.3f}, c=50 {ratio50:.3f}"
        )
    for name in ("on", "on 10%"):
        print(f"spans received from '{name}': {spans.get(name, 0)} for about {results[name]['requests']} requests")
    print(
        "in process, the tracing hooks of one relayed request (2 spans): "
        + ", ".join(f"{name} {cost:.2f} us" for name, cost in costs.items())
    )


if __name__ == "__main__":
    main()
