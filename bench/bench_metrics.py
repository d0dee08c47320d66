"""What counting a call costs the hot path: metrics tallies and the request log line, in microseconds per call.

Measures, in one process, per finished call:
- `metrics_record` + `metrics_response` + a stream open/close (what the relay and the edge do per call),
- the same counts written straight to prometheus-client's multi-process files (what the tallies avoid),
- the background flush, per call, at 1,000 calls between flushes,
- the request log line, text and JSON, to a file.
Usage: python bench/bench_metrics.py [--calls 200000]
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aigateway.settings")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")

import django  # noqa: E402

django.setup()

from aigateway import metrics  # noqa: E402
from aigateway.logs import JsonFormatter, request_log  # noqa: E402

EVENT = {
    "request_id": "req_0123456789abcdef0123456789abcdef",
    "api_key_id": 1,
    "model": "sim-fast",
    "requested_model": "",
    "route": "default",
    "provider": "simulator",
    "deployment_id": 1,
    "endpoint": "chat.completions",
    "stream": True,
    "status_code": 200,
    "error_type": "",
    "prompt_tokens": 25,
    "completion_tokens": 120,
    "cached_tokens": 0,
    "tokens_estimated": False,
    "attempts": 1,
    "run_id": "",
    "created_at": 0.0,
    "ttfb_ms": 3.2,
    "ttfb_upstream_ms": 2.9,
    "duration_ms": 812.0,
}


def per_call(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def tallies() -> None:
    metrics.metrics_stream_opened()
    metrics.metrics_stream_closed()
    metrics.metrics_record(EVENT, ())
    metrics.metrics_response("chat_completions", 200)


def direct() -> None:
    metrics.STREAMS_IN_FLIGHT.inc()
    metrics.STREAMS_IN_FLIGHT.dec()
    metrics.REQUESTS.labels("sim-fast", "simulator", "chat.completions", "200").inc()
    metrics.TOKENS.labels("sim-fast", "prompt").inc(25)
    metrics.TOKENS.labels("sim-fast", "completion").inc(120)
    metrics.DURATION.labels("sim-fast", "simulator").observe(0.812)
    metrics.TTFB.labels("sim-fast", "simulator").observe(0.0032)
    metrics.HTTP_RESPONSES.labels("chat_completions", "200").inc()


def flushed_every(calls_between: int):
    def run() -> None:
        for _ in range(calls_between):
            tallies()
        metrics.metrics_flush()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    calls = args.calls
    metrics._flush_soon = lambda: None  # no event loop here: flushes are measured on their own below
    rows = []
    rows.append(("tallies (relay + edge, per call)", per_call(tallies, calls)))
    metrics.metrics_flush()
    rows.append(("same counts straight to prometheus-client", per_call(direct, calls // 4)))
    batch = per_call(flushed_every(1000), calls // 1000) / 1000
    rows.append(("tallies + flush every 1,000 calls", batch))

    logger = logging.getLogger("aigateway.requests")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with tempfile.NamedTemporaryFile("w", suffix=".log") as sink:
        handler = logging.StreamHandler(open(sink.name, "w"))  # noqa: SIM115 - closed below
        logger.addHandler(handler)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        rows.append(
            ("request log line, text", per_call(lambda: request_log(EVENT, key_prefix="sk-gw-ab12"), calls // 4))
        )
        handler.setFormatter(JsonFormatter())
        rows.append(
            ("request log line, JSON", per_call(lambda: request_log(EVENT, key_prefix="sk-gw-ab12"), calls // 4))
        )
        logger.setLevel(logging.WARNING)
        rows.append(
            (
                "request log off (GATEWAY_REQUEST_LOG=false)",
                per_call(lambda: request_log(EVENT, key_prefix="sk-gw-ab12"), calls),
            )
        )
        handler.stream.close()
    width = max(len(name) for name, _ in rows)
    print(f"{'per finished call':<{width}}  microseconds")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.2f}")


if __name__ == "__main__":
    main()
