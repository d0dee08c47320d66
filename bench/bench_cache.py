"""Response cache benchmark on loopback: one gateway (uvicorn), the simulator, embedded Redis, a Celery worker.

Interleaves, at concurrency 1 over keep-alive httpx, streamed and non-streamed chat completions of three
kinds: a key with the cache off, a key with it on asking a new prompt every time (a miss: the lookup's whole
cost), and the same key asking a cached prompt (a hit). Prints time to first byte and total time (p50, p99)
of each, the miss's cost over the cache off, and in process the plan (fingerprint) and the admission with and
without the entry looked up in its round trip. Usage: `python bench/bench_cache.py [--quick]`.
"""

import argparse
import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_relay import Bench, pct  # noqa: E402
from tests.support.ports import stop_process  # noqa: E402

PROMPT = "Benchmark the response cache, please"


async def _timed(client: httpx.AsyncClient, base: str, key: str, body: dict) -> tuple[float, float, str]:
    """(ms to the first body byte, ms to the last, the x-gateway-cache header) of one call."""
    headers = {"Authorization": f"Bearer {key}"}
    started = time.perf_counter()
    async with client.stream("POST", base + "/chat/completions", json=body, headers=headers) as response:
        chunks = response.aiter_raw()
        await anext(chunks)
        first = time.perf_counter()
        async for _ in chunks:
            pass
        done = time.perf_counter()
        assert response.status_code == 200, response.status_code
    return (first - started) * 1000, (done - started) * 1000, response.headers.get("x-gateway-cache", "")


async def interleaved(base: str, keys: dict[str, str], *, stream: bool, rounds: int) -> dict[str, list[tuple]]:
    """Each kind's (ttfb, total) samples, the kinds taking turns so drift hits them alike."""
    results: dict[str, list[tuple]] = {kind: [] for kind in ("off", "miss", "hit")}
    async with httpx.AsyncClient(timeout=30) as client:
        hit_body = {"model": "sim-fast", "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
        await _timed(client, base, keys["on"], hit_body)  # stores the entry the hits read
        await asyncio.sleep(0.2)
        for index in range(rounds + 5):
            fresh = f"{PROMPT} {uuid.uuid4().hex}"
            calls = {
                "off": (keys["off"], hit_body),
                "miss": (keys["on"], {**hit_body, "messages": [{"role": "user", "content": fresh}]}),
                "hit": (keys["on"], hit_body),
            }
            order = list(calls)[index % 3 :] + list(calls)[: index % 3]
            for kind in order:
                key, body = calls[kind]
                ttfb, total, result = await _timed(client, base, key, body)
                expected = {"off": "bypass", "miss": "miss", "hit": "hit"}[kind]
                assert result == expected, (kind, result)
                if index >= 5:
                    results[kind].append((ttfb, total))
    return results


async def lookup_cost(samples: int) -> dict[str, float]:
    """Microseconds, in process, of what a miss adds: the plan (canonical parse + fingerprint), and the admission
    with the entry looked up in its round trip against the same admission without (a key with limits)."""
    from accounts.context import KeyContext
    from accounts.limits import limits_admit
    from streaming.cache import cache_plan
    from streaming.meter import StreamMeter
    from streaming.relay import RelayCall

    ctx = KeyContext(
        key_id=1,
        key_prefix="sk-gw-bench",
        key_name="bench",
        owner_id=1,
        is_staff=False,
        tier_name="bench",
        rpm=100_000_000,
        tpm=None,
        max_concurrent=None,
        daily_tokens=None,
        max_output_tokens=None,
        max_compare_models=4,
        cache_ttl=60,
    )

    def call(index: int) -> RelayCall:
        body = {"model": "sim-fast", "messages": [{"role": "user", "content": f"{PROMPT} {index}"}]}
        return RelayCall("req_bench", ctx, "chat.completions", "sim-fast", body, False, False, StreamMeter())

    calls = [call(index) for index in range(samples)]
    started = time.perf_counter()
    for relay_call in calls:
        cache_plan(relay_call, "")
    plan_us = (time.perf_counter() - started) / samples * 1e6

    async def admissions(with_key: bool) -> float:
        started = time.perf_counter()
        for relay_call in calls:
            key = relay_call.cache.key if with_key else None
            admission = await limits_admit(ctx, estimate_tokens=10, request_id="req_bench", cache_key=key)
            assert admission.allowed and admission.cached is None
        return (time.perf_counter() - started) / samples * 1e6

    await admissions(False)  # connection and script cache warm
    plain, looked_up = [], []
    for _ in range(3):  # alternated, so drift hits both alike
        plain.append(await admissions(False))
        looked_up.append(await admissions(True))
    return {"plan": plan_us, "admission": min(plain), "admission_with_lookup": min(looked_up)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.no_memory = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rounds = 300 if args.quick else 1000
    bench = Bench(args)
    try:
        bench.setup()
        from accounts.models import Tier
        from accounts.services import api_key_issue, service_user_get_or_create

        cached = Tier.objects.create(
            name="bench-cached",
            rpm=100_000_000,
            tpm=10**12,
            max_concurrent=100_000,
            daily_tokens=10**15,
            cache_ttl_seconds=3600,
        )
        keys = {
            "off": bench.key,
            "on": api_key_issue(owner=service_user_get_or_create(), tier=cached, name="cached").plaintext,
        }
        url, process = bench.start_gateway("uvicorn")
        rows = {}
        for stream in (True, False):
            rows[stream] = asyncio.run(interleaved(url + "/v1", keys, stream=stream, rounds=rounds))
        stop_process(process)
        lookup = asyncio.run(lookup_cost(2000 if args.quick else 10000))
    finally:
        bench.close()
    print(f"\n{'mode':<12}{'kind':<6}{'ttfb p50':>10}{'p99':>9}{'total p50':>11}{'p99':>9}   (ms, {rounds} calls each)")
    for stream, results in rows.items():
        for kind, samples in results.items():
            ttfbs, totals = [s[0] for s in samples], [s[1] for s in samples]
            print(
                f"{'stream' if stream else 'whole':<12}{kind:<6}{pct(ttfbs, 50):>10.3f}{pct(ttfbs, 99):>9.3f}"
                f"{pct(totals, 50):>11.3f}{pct(totals, 99):>9.3f}"
            )
        off = pct([s[0] for s in results["off"]], 50)
        miss = pct([s[0] for s in results["miss"]], 50)
        hit = pct([s[0] for s in results["hit"]], 50)
        print(f"{'':<12}miss - off: {miss - off:+.3f} ms ttfb p50; hit / miss: {hit / miss:.2f}x ttfb p50")
    print(
        f"\nin process, per miss: plan (canonical parse + fingerprint) {lookup['plan']:.1f} us; admission "
        f"{lookup['admission']:.1f} us, with the entry looked up in it {lookup['admission_with_lookup']:.1f} us "
        f"(+{lookup['admission_with_lookup'] - lookup['admission']:.1f} us)"
    )


if __name__ == "__main__":
    main()
