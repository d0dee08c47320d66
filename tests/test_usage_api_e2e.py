"""GET /api/v1/usage over loopback from a real gateway process while the usage worker is stopped and
events pile up: its cost does not grow with the queue, its totals are exactly the queued events', and
once a real Celery worker has flushed them the same totals come from the database, counted once. The
endpoint is throttled per key."""

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import orjson
import pytest

from accounts.keys import key_hash
from accounts.models import ApiKey
from accounts.usage import USAGE_QUEUE_KEY, usage_record
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "count me"}]
QUEUED = 3000
PRICES = {"sim-fast": (Decimal(2), Decimal(8)), "sim-broken": (Decimal(0), Decimal(0))}


def _report(client: httpx.Client, url: str, key: str) -> httpx.Response:
    return client.get(url + "/api/v1/usage", headers={"Authorization": f"Bearer {key}"})


def _fastest_ms(client: httpx.Client, url: str, key: str, calls: int = 25) -> float:
    """The fastest of `calls` reports after a warm-up: what the call costs, without the noise of whatever
    else the machine is running."""
    samples = []
    for index in range(calls + 5):
        started = time.perf_counter()
        response = _report(client, url, key)
        if index >= 5:
            samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return min(samples)


def _queued_totals(key_id: int) -> dict:
    """The queued events' totals worked out from the queue itself."""
    totals = {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": Decimal(0)}
    for raw in redis_sync().lrange(USAGE_QUEUE_KEY, 0, -1):
        event = orjson.loads(raw)
        if event["api_key_id"] != key_id:
            continue
        totals["requests"] += 1
        totals["errors"] += 1 if event["status_code"] >= 400 else 0
        totals["prompt_tokens"] += event["prompt_tokens"]
        totals["completion_tokens"] += event["completion_tokens"]
        price_in, price_out = PRICES[event["model"]]
        totals["cost"] += (event["prompt_tokens"] * price_in + event["completion_tokens"] * price_out) / 1_000_000
    return totals


def _as_numbers(totals: dict) -> dict:
    return {**totals, "cost": Decimal(totals["cost"]).quantize(Decimal("0.00000001"))}


def _queue_directly(key_id: int, count: int) -> None:
    """Events queued through the hot path's own writer, as a busy gateway would, 500 at a time."""

    async def run():
        for first in range(0, count, 500):
            await asyncio.gather(
                *(
                    usage_record(
                        {
                            "request_id": f"bulk-{i}",
                            "api_key_id": key_id,
                            "model": "sim-fast",
                            "provider": "sim",
                            "endpoint": "chat.completions",
                            "status_code": 200 if i % 10 else 503,
                            "prompt_tokens": i % 50,
                            "completion_tokens": i % 7,
                            "created_at": time.time(),
                        }
                    )  # fmt: skip
                    for i in range(first, min(first + 500, count))
                )
            )

    asyncio.run(run())


def test_report_cost_is_flat_in_the_queue_length_and_its_totals_exact(gateway_factory, fresh_simulator, celery_worker):
    gateway = gateway_factory(GATEWAY_USAGE_API_RPM="0")
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo?tokens=9", 0)], input_price_per_million=2, output_price_per_million=8)
    model_create("sim-broken", [(sim, "sim-echo?fail=500", 0)])
    key = key_create("reporting")
    other = key_create("bystander")
    key_id = ApiKey.objects.get(key_hash=key_hash(key)).pk
    with httpx.Client(timeout=60) as client:
        empty_ms = _fastest_ms(client, gateway.url, key)
        # Real calls through the gateway (plain, streamed, failed), another key's calls, then a pile-up.
        for body in (
            {"model": "sim-fast", "messages": MESSAGES},
            {"model": "sim-fast", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
            {"model": "sim-broken", "messages": MESSAGES},
        ):
            for caller in (key, other):
                client.post(gateway.openai_base + "/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {caller}"})  # fmt: skip
        eventually(lambda: redis_sync().llen(USAGE_QUEUE_KEY) == 6, timeout=5, what="the calls' events queued")
        _queue_directly(key_id, QUEUED)
        assert redis_sync().llen(USAGE_QUEUE_KEY) == QUEUED + 6
        expected = _queued_totals(key_id)
        assert expected["requests"] == QUEUED + 3 and expected["errors"] == QUEUED // 10 + 1

        queued_ms = _fastest_ms(client, gateway.url, key)
        assert queued_ms < 3 * empty_ms + 5, (empty_ms, queued_ms)
        before = _report(client, gateway.url, key).json()
        assert _as_numbers(before["totals"]) == _as_numbers(expected)

        # The worker drains the queue: the same totals, now from the database, counted once.
        celery_worker(flush_seconds=0.3)
        eventually(lambda: redis_sync().llen(USAGE_QUEUE_KEY) == 0, timeout=60, what="the queue drained")
        assert not list(redis_sync().scan_iter("gw:usage:pending:*"))
        after = _report(client, gateway.url, key).json()
        assert _as_numbers(after["totals"]) == _as_numbers(expected)
        assert after["rows"] == before["rows"]
        today = datetime.now(UTC).date().isoformat()
        assert {row["date"] for row in after["rows"]} == {today}


def test_the_report_is_throttled_per_key(gateway_factory):
    gateway = gateway_factory(GATEWAY_USAGE_API_RPM="5")
    key, other = key_create("throttled"), key_create("neighbour")
    with httpx.Client(timeout=10) as client:
        statuses = [_report(client, gateway.url, key).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        refused = _report(client, gateway.url, key)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 13
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "throttled", None)
        assert _report(client, gateway.url, other).status_code == 200
