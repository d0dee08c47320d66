"""Prometheus metrics of a real two-worker gateway, scraped after mixed traffic: every counter equals the
usage records the same calls produced, and the JSON request log has one line per call."""

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from django.db.models import Sum
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import UsageRecord
from accounts.usage import usage_flush
from aigateway.redis import redis_sync
from providers.health import HEALTH_DOWN_KEY
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import ROOT, gateway_env
from tests.support.ports import free_port, stop_process, wait_http

pytestmark = pytest.mark.django_db(transaction=True)

METRICS_TOKEN = "metrics-token-for-tests"
PROMPT_WORD = "zanzibar-confidential"


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """Samples by name, each keyed by its sorted label items."""
    response = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(value for key, value in samples.get(name, {}).items() if wanted <= set(key))


@pytest.fixture
def two_worker_gateway(redis_server, simulator, tmp_path):
    port = free_port()
    log_path = tmp_path / "gateway.log"
    env = gateway_env(
        redis_server,
        GATEWAY_METRICS_TOKEN=METRICS_TOKEN,
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_SHUTDOWN_GRACE_SECONDS="1",
        GATEWAY_BREAKER_FAILURES="3",
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_gateway", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout=60, process=process)
        yield url, process, log_path
    finally:
        stop_process(process, timeout=20)


def _chat(model: str, *, stream: bool, text: str = "hello") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": f"{text} {PROMPT_WORD}"}], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _traffic(url: str, key: str) -> Counter:
    """Mixed calls; returns how many of each kind were made."""
    made: Counter = Counter()
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers, limits=limits) as client:

        async def chat(model: str, stream: bool, kind: str) -> None:
            response = await client.post("/v1/chat/completions", json=_chat(model, stream=stream))
            assert response.status_code == 200, response.text
            made[kind] += 1

        async def anthropic(model: str) -> None:
            response = await client.post(
                "/v1/messages",
                json={
                    "model": model,
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                },
                headers={"anthropic-version": "2023-06-01"},
            )
            assert response.status_code == 200, response.text
            made["anthropic"] += 1

        async def leave_early() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=_chat("m-slow", stream=True)) as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break
            made["disconnect"] += 1

        async def unknown() -> None:
            response = await client.post("/v1/chat/completions", json=_chat("no-such-model", stream=False))
            assert response.status_code == 404
            made["refused"] += 1

        calls = []
        for index in range(24):
            calls.append(chat("m-ok", index % 2 == 0, "ok"))
        for _ in range(8):
            calls.append(chat("m-failover", False, "failover"))
        for _ in range(6):
            calls.append(anthropic("m-cached"))
        for _ in range(5):
            calls.append(chat("m-drop", True, "drop"))
        for _ in range(4):
            calls.append(leave_early())
        for _ in range(3):
            calls.append(unknown())
        await asyncio.gather(*calls)
    return made


def _metrics_dir_of(process: subprocess.Popen) -> Path:
    return ROOT / "var" / "metrics" / str(process.pid)


def test_metrics_of_two_workers_equal_the_usage_records(two_worker_gateway, simulator):
    url, process, log_path = two_worker_gateway
    sim = provider_create("sim", simulator.openai_base)
    model_create("m-ok", [(sim, "sim-echo?tokens=5", 0)])
    model_create("m-failover", [(sim, "sim-echo?fail=500", 0), (sim, "sim-echo?tokens=3", 1)])
    model_create("m-drop", [(sim, "sim-echo?tokens=6&drop_after=2", 0)])
    model_create("m-slow", [(sim, "sim-echo?tokens=200&interval_ms=50", 0)])
    anth = provider_create("sim-anthropic", simulator.anthropic_base, dialect="anthropic")
    model_create("m-cached", [(anth, "sim-echo?tokens=4&cached=3", 0)])
    key = key_create("metrics")
    redis = redis_sync()

    # 401 without the token; the page itself is not an HTML page either way.
    refused = httpx.get(url + "/metrics", timeout=10)
    assert refused.status_code == 401 and "GATEWAY_METRICS_TOKEN" in refused.text

    # A stream held open shows in gateway_streams_in_flight.
    async def held_stream():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json=_chat("m-slow", stream=True),
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                chunks = response.aiter_bytes()
                assert await anext(chunks)
                deadline = time.monotonic() + 10
                while total(await asyncio.to_thread(scrape, url), "gateway_streams_in_flight") != 1:
                    assert time.monotonic() < deadline, "the open stream never showed in gateway_streams_in_flight"
                    await asyncio.sleep(0.2)

    asyncio.run(held_stream())
    made = asyncio.run(_traffic(url, key))
    admitted = sum(made.values()) - made["refused"] + 1  # + the held stream

    # Every call's usage event is queued; the queue depth gauge sees them before the flush.
    deadline = time.monotonic() + 15
    while redis.llen("gw:usage:queue") < admitted:
        assert time.monotonic() < deadline, f"{redis.llen('gw:usage:queue')} of {admitted} usage events queued"
        time.sleep(0.1)
    assert total(scrape(url), "gateway_usage_queue_depth") == admitted
    assert usage_flush(batch_size=1000) == admitted
    records = list(UsageRecord.objects.all())
    assert len(records) == admitted

    # Each worker writes its tallies within a second of its last call.
    deadline = time.monotonic() + 15
    # A worker writes its counters, then its histograms (one observation at a time): a scrape in between
    # sees the first without the second, so both are waited for.
    while (
        total(samples := scrape(url), "gateway_requests_total") != admitted
        or total(samples, "gateway_request_duration_seconds_count") != admitted
    ):
        assert time.monotonic() < deadline, f"{total(samples, 'gateway_requests_total')} counted, {admitted} recorded"
        time.sleep(0.3)
    assert total(samples, "gateway_usage_queue_depth") == 0
    assert total(samples, "gateway_streams_in_flight") == 0

    # Both worker processes served calls and wrote their own counters; the page added them up.
    counter_files = list(_metrics_dir_of(process).glob("counter_*.db"))
    assert len(counter_files) == 2, counter_files

    # gateway_requests_total equals the records, label set by label set.
    by_labels = Counter(
        (("endpoint", r.endpoint), ("model", r.model), ("provider", r.provider), ("status", str(r.status_code)))
        for r in records
    )
    counted = {key: value for key, value in samples["gateway_requests_total"].items() if value}
    assert counted == dict(by_labels)
    statuses = Counter(r.status_code for r in records)
    assert statuses[499] == made["disconnect"] + 1 and statuses[502] == made["drop"]

    # Tokens, per model and kind, equal the records' sums.
    for model in {r.model for r in records}:
        sums = UsageRecord.objects.filter(model=model).aggregate(
            prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cached=Sum("cached_tokens")
        )
        for kind, expected in sums.items():
            assert total(samples, "gateway_tokens_total", model=model, kind=kind) == expected, (model, kind)
    assert total(samples, "gateway_tokens_total", model="m-cached", kind="cached") == 3 * made["anthropic"]

    # Histograms: one duration per call, one time-to-first-byte per call that sent a byte.
    assert total(samples, "gateway_request_duration_seconds_count") == admitted
    with_ttfb = sum(1 for r in records if r.ttfb_ms is not None)
    assert total(samples, "gateway_time_to_first_byte_seconds_count") == with_ttfb
    assert total(samples, "gateway_request_duration_seconds_bucket", le="+Inf") == admitted

    # Upstream errors: every failed attempt before the first byte, and every stream cut mid-way.
    failed_attempts = sum(r.attempts - 1 for r in records if r.model == "m-failover")
    assert failed_attempts >= 3
    assert total(samples, "gateway_upstream_errors_total", provider="sim", kind="http_status") == failed_attempts
    assert total(samples, "gateway_upstream_errors_total", provider="sim", kind="mid_stream") == made["drop"]

    # Refusals are not relay calls, but every answer is counted by view and status.
    assert total(samples, "gateway_http_responses_total", view="chat_completions", status="404") == made["refused"]

    # Shared state: the failing deployment's breaker opened (3 failures), the provider is up until marked down.
    assert total(samples, "gateway_breaker_open", provider="sim", model="sim-echo?fail=500") == 1
    assert total(samples, "gateway_breaker_open", provider="sim", model="sim-echo?tokens=3") == 0
    assert total(samples, "gateway_provider_up", provider="sim") == 1
    redis.set(HEALTH_DOWN_KEY.format(provider_id=sim.pk), "probe failed", ex=30)
    assert total(scrape(url), "gateway_provider_up", provider="sim") == 0
    assert total(scrape(url), "gateway_provider_up", provider="sim-anthropic") == 1

    # One JSON request line per call, with the key's prefix and never the key or the prompt.
    raw_lines = log_path.read_bytes().splitlines()
    banner = [line for line in raw_lines if line.startswith(b"gateway on http://")]  # the command's, on stdout
    assert len(banner) == 1
    not_json = [line for line in raw_lines if line not in banner and not line.startswith(b"{")]
    assert not not_json, not_json  # every log line, uvicorn's too, is one JSON object
    lines = [orjson.loads(line) for line in raw_lines if line not in banner]
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    request_lines = [line for line in lines if line["logger"] == "aigateway.requests"]
    assert sorted(line["request_id"] for line in request_lines) == sorted(r.request_id for r in records)
    text = log_path.read_text()
    assert key not in text and PROMPT_WORD not in text
    failover = next(line for line in request_lines if line["model"] == "m-failover" and line["attempts"] > 1)
    assert failover["failover"] is True and failover["status_code"] == 200 and failover["provider"] == "sim"
    assert failover["key_prefix"] and key.startswith(failover["key_prefix"].rstrip("."))
    for field in ("ttfb_ms", "duration_ms", "prompt_tokens", "completion_tokens", "endpoint", "stream"):
        assert field in failover
    assert all(line["message"] for line in lines)


def test_metrics_process_files_are_shared_through_the_environment(tmp_path):
    """An operator's PROMETHEUS_MULTIPROC_DIR is used as given; without one, a process gets its own
    fresh folder, and children it starts inherit it."""
    code = "import django, os; django.setup(); from django.conf import settings; print(settings.METRICS_DIR)"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["DJANGO_SETTINGS_MODULE"] = "aigateway.settings"
    own = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    folder = Path(own.stdout.strip().splitlines()[-1])
    assert folder.parent == ROOT / "var" / "metrics" and folder.name.isdigit()
    given = dict(env, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "shared"))
    used = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=given, capture_output=True, text=True, check=True)
    assert used.stdout.strip().splitlines()[-1] == str(tmp_path / "shared")
