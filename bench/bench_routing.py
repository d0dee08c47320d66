"""Routing rules benchmark: added time to first byte of a streamed completion with 50 routing rules
configured (none matching, so every request evaluates all of them) against none, in one gateway.

Phases alternate none / 50 rules / none / 50 rules so machine noise hits both alike; the gateway reloads
its route table when the config version moves. Usage: `python bench/bench_routing.py [--samples N]`.
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_relay import Bench, pct, ttfb  # noqa: E402

RULES = 50


def rules_create(count: int) -> None:
    from providers.models import Model, RouteRule

    target = Model.objects.get(name="sim-fast")
    kinds = [
        lambda i: {"header": {"x-gateway-route": f"lane-{i}"}},
        lambda i: {"min_prompt_tokens": 1_000_000 + i},
        lambda i: {"model": f"nomatch-{i}-*"},
        lambda i: {"tier": f"tier-{i}"},
        lambda i: {"metadata_user": f"user-{i}-*", "stream": True},
    ]
    for i in range(count):
        RouteRule.objects.create(name=f"bench-{i}", order=i, when=kinds[i % len(kinds)](i), target=target)


def rules_delete() -> None:
    from providers.models import RouteRule

    RouteRule.objects.filter(name__startswith="bench-").delete()


async def measure(base: str, key: str, samples: int) -> list[float]:
    return await ttfb(base, key, "sim-fast", concurrency=1, total=samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "daphne"])
    args = parser.parse_args()
    bench = Bench(argparse.Namespace(quick=True, no_litellm=True))
    try:
        bench.setup()
        base, _ = bench.start_gateway(args.server)
        direct = asyncio.run(ttfb(bench.sim_url + "/v1", "x", "sim-echo", concurrency=1, total=args.samples))
        results: dict[str, list[float]] = {"none": [], "50 rules": []}
        for phase in ("none", "50 rules", "none", "50 rules"):
            rules_delete()
            if phase != "none":
                rules_create(RULES)
            time.sleep(2.5)  # every process notices the config version within GATEWAY_CONFIG_CHECK_SECONDS
            results[phase] += asyncio.run(measure(base + "/v1", bench.key, args.samples))
        limit = statistics.median(direct)
        print(f"\n### Routing rules, gateway under {args.server}, {args.samples * 2} streamed requests per row, c1\n")
        print("| rules | TTFB p50 ms | p99 ms | added p50 ms |")
        print("|---|---:|---:|---:|")
        print(f"| direct simulator | {limit:.3f} | {pct(direct, 99):.3f} | - |")
        for phase, values in results.items():
            p50 = statistics.median(values)
            print(f"| {phase} | {p50:.3f} | {pct(values, 99):.3f} | {p50 - limit:.3f} |")
        delta = statistics.median(results["50 rules"]) - statistics.median(results["none"])
        print(f"\n50 rules vs none: {delta * 1000:+.0f} us at p50")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
