"""Resumable streams benchmark on loopback: one gateway (uvicorn), the simulator, embedded Redis, a Celery worker.

Interleaves, at concurrency 1, streamed chat completions of N tokens sent as fast as the simulator can (no
interval), plain and with `x-gateway-resumable: true`, and reports their total time (p50, p99) and the added
cost per event of a resumable stream ((resumable - plain) / events, at the p50). Then the Redis memory a buffered
stream takes (MEMORY USAGE of its Redis Stream and meta hash) for answers of 50, 500 and 2000 tokens, per stream
and per event. Usage: `python bench/bench_resumable.py [--quick]`.
"""

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_relay import Bench, pct  # noqa: E402
from tests.support.ports import stop_process  # noqa: E402

MESSAGES = [{"role": "user", "content": "Benchmark resumable streams, please"}]


async def _stream(
    client: httpx.AsyncClient, base: str, key: str, model: str, resumable: bool
) -> tuple[float, int, str]:
    """(ms to the last byte, events received, the stream id) of one streamed call."""
    headers = {"Authorization": f"Bearer {key}"}
    if resumable:
        headers["x-gateway-resumable"] = "true"
    body = {"model": model, "messages": MESSAGES, "stream": True}
    started = time.perf_counter()
    async with client.stream("POST", base + "/chat/completions", json=body, headers=headers) as response:
        raw = await response.aread()
    took = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.status_code
    events = raw.count(b"\n\n") - raw.count(b": keepalive\n\n")
    return took, events, response.headers.get("x-gateway-stream-id", "")


async def interleaved(base: str, key: str, model: str, rounds: int) -> dict[str, list[tuple[float, int]]]:
    results: dict[str, list[tuple[float, int]]] = {"plain": [], "resumable": []}
    async with httpx.AsyncClient(timeout=60) as client:
        for index in range(rounds + 5):
            order = ("plain", "resumable") if index % 2 else ("resumable", "plain")
            for kind in order:
                took, events, _ = await _stream(client, base, key, model, kind == "resumable")
                if index >= 5:
                    results[kind].append((took, events))
    return results


async def memory(base: str, key: str, model: str) -> tuple[int, int]:
    """(bytes of Redis memory, events) of one buffered stream once it ended."""
    from aigateway.redis import redis_async
    from streaming.resumable import stream_key

    async with httpx.AsyncClient(timeout=60) as client:
        _took, _events, stream_id = await _stream(client, base, key, model, True)
    client = redis_async()
    await asyncio.sleep(0.3)  # the keeper's last append
    stream_bytes = await client.memory_usage(stream_key(stream_id), samples=0) or 0
    meta_bytes = await client.memory_usage(stream_key(stream_id) + ":m", samples=0) or 0
    events = await client.xlen(stream_key(stream_id))
    return stream_bytes + meta_bytes, events - 1  # less the end marker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.no_memory = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rounds = 40 if args.quick else 150
    bench = Bench(args)
    try:
        bench.setup()
        from providers.models import Deployment, Model, Provider

        provider = Provider.objects.get(name="sim")
        for tokens in (50, 500, 2000):
            model = Model.objects.create(name=f"sim-{tokens}")
            Deployment.objects.create(model=model, provider=provider, upstream_model=f"sim-echo?tokens={tokens}")
        url, process = bench.start_gateway("uvicorn")
        base = url + "/v1"
        timing = asyncio.run(interleaved(base, bench.key, "sim-500", rounds))
        sizes = {tokens: asyncio.run(memory(base, bench.key, f"sim-{tokens}")) for tokens in (50, 500, 2000)}
        stop_process(process)
    finally:
        bench.close()
    print(f"\n500-token streams at concurrency 1, {rounds} each, interleaved (ms to the last byte):")
    p50 = {}
    for kind, samples in timing.items():
        totals = [sample[0] for sample in samples]
        events = samples[0][1]
        p50[kind] = pct(totals, 50)
        print(f"  {kind:<10} p50 {pct(totals, 50):8.2f}  p99 {pct(totals, 99):8.2f}  ({events} events)")
    per_event = (p50["resumable"] - p50["plain"]) * 1000 / timing["plain"][0][1]
    print(f"  added per event (p50): {per_event:+.1f} us")
    print("\nRedis memory of one buffered stream after it ended (Redis Stream + meta):")
    for tokens, (size, events) in sizes.items():
        print(f"  {tokens:>5} tokens: {size:>8} bytes, {events} events, {size / max(events, 1):.0f} bytes per event")


if __name__ == "__main__":
    main()
