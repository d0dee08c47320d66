"""Flushes running at the same time: two real Celery workers draining one queue, and two writers upserting
the same daily aggregate rows without the Redis flush lock. Every event is stored once and the daily rows
equal the sums of the events, on SQLite and on PostgreSQL."""

import asyncio
import re
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from django.db import connection
from django.db.models import Count, Sum

from accounts import usage
from accounts.models import ApiKey, Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.usage import USAGE_DEAD_KEY, USAGE_QUEUE_KEY, usage_record
from aigateway.redis import redis_sync
from providers.models import Model

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = 10_000
DAYS = (
    datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC).timestamp(),
    datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC).timestamp(),
)
# (input, output, cached input) per million tokens.
PRICES = {
    "gpt-concurrent": (Decimal("2.5"), Decimal("10"), Decimal("1.25")),
    "claude-concurrent": (Decimal("3"), Decimal("15"), None),
}
MODELS = tuple(PRICES)


@pytest.fixture
def key_ids() -> list[int]:
    for name, (price_in, price_out, price_cached) in PRICES.items():
        Model.objects.create(
            name=name,
            input_price_per_million=price_in,
            output_price_per_million=price_out,
            cached_input_price_per_million=price_cached,
        )
    tier = Tier.objects.create(name="concurrent")
    owner = service_user_get_or_create()
    return [api_key_issue(owner=owner, tier=tier, name=f"concurrent-{index}").api_key.pk for index in range(3)]


def usage_event(index: int, key_ids: list[int]) -> dict:
    """Event `index`: spread over the keys (every 13th has none), both models and two UTC days."""
    prompt = 50 + index % 97
    return {
        "request_id": f"concurrent-{index:05d}",
        "api_key_id": None if index % 13 == 0 else key_ids[index % len(key_ids)],
        "model": MODELS[index % 2],
        "provider": "sim",
        "deployment_id": None,
        "endpoint": "chat.completions",
        "stream": index % 3 == 0,
        "status_code": (200, 200, 200, 200, 429, 503)[index % 6],
        "error_type": "",
        "prompt_tokens": prompt,
        "completion_tokens": 7 + index % 41,
        "cached_tokens": prompt // 2 if index % 4 == 0 else 0,
        "tokens_estimated": False,
        "chunk_count": 3,
        "attempts": 1,
        "created_at": DAYS[(index // 7) % 2],
    }


def event_cost(event: dict) -> Decimal:
    price_in, price_out, price_cached = PRICES[event["model"]]
    cached = event["cached_tokens"]
    total = (
        (event["prompt_tokens"] - cached) * price_in
        + cached * (price_in if price_cached is None else price_cached)
        + event["completion_tokens"] * price_out
    )
    return (total / Decimal(1_000_000)).quantize(Decimal("0.00000001"))


def expected_daily(events: list[dict]) -> dict[tuple, dict]:
    daily: dict[tuple, dict] = defaultdict(
        lambda: {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": Decimal(0)}
    )
    for event in events:
        if event["api_key_id"] is None:
            continue
        day = datetime.fromtimestamp(event["created_at"], tz=UTC).date()
        row = daily[(day, event["api_key_id"], event["model"])]
        row["requests"] += 1
        row["errors"] += 1 if event["status_code"] >= 400 else 0
        row["prompt_tokens"] += event["prompt_tokens"]
        row["completion_tokens"] += event["completion_tokens"]
        row["cost"] += event_cost(event)
    return dict(daily)


def stored_daily() -> dict[tuple, dict]:
    return {
        (row.date, row.api_key_id, row.model): {
            "requests": row.requests,
            "errors": row.errors,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "cost": row.cost,
        }
        for row in UsageDaily.objects.all()
    }


def assert_stored_exactly(events: list[dict]) -> None:
    records = UsageRecord.objects.aggregate(
        records=Count("id"), distinct=Count("request_id", distinct=True), cost=Sum("cost")
    )
    assert records == {"records": len(events), "distinct": len(events), "cost": sum(map(event_cost, events))}
    expected = expected_daily(events)
    assert len(expected) == 12  # 3 keys x 2 models x 2 days
    assert stored_daily() == expected


def flushes_with_records(worker) -> list[int]:
    """Records written by each flush task the worker ran, from its log (Celery logs a task's return value)."""
    pattern = r"Task accounts\.tasks\.flush_usage\[[^\]]+\] succeeded in [\d.e-]+s: (\d+)"
    return [int(written) for written in re.findall(pattern, worker.log()) if int(written)]


def test_two_workers_flush_one_queue_exactly_once(key_ids, celery_worker):
    """Ten thousand events pushed through the hot path's push while two worker processes flush the same
    queue: both write batches, and the result is one record per event and exact daily sums."""
    events = [usage_event(index, key_ids) for index in range(EVENTS)]
    with_beat = celery_worker(beat=True, flush_seconds=0.1, loglevel="info", wait=False)
    without_beat = celery_worker(beat=False, loglevel="info", wait=False)
    with_beat.wait_ready()
    without_beat.wait_ready()
    started = time.monotonic()

    async def push() -> None:
        # Spread over about three seconds, so that beat's flushes (every 0.1 s) land on both workers.
        for start in range(0, EVENTS, 100):
            await asyncio.gather(*(usage_record(event) for event in events[start : start + 100]))
            await asyncio.sleep(0.03)

    asyncio.run(push())
    client = redis_sync()
    deadline = time.monotonic() + 60
    while client.llen(USAGE_QUEUE_KEY) or UsageRecord.objects.count() < EVENTS:
        assert time.monotonic() < deadline, (client.llen(USAGE_QUEUE_KEY), UsageRecord.objects.count())
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # a flush still running would show up as extra rows below

    assert_stored_exactly(events)
    assert client.llen(USAGE_DEAD_KEY) == 0
    assert ApiKey.objects.filter(pk__in=key_ids, last_used_at__isnull=False).count() == len(key_ids)
    for worker in (with_beat, without_beat):
        assert flushes_with_records(worker), f"worker {worker.nodename} wrote no batch:\n{worker.log()[-2000:]}"
    print(
        f"{EVENTS} events pushed and flushed in {elapsed:.1f}s; batches written per worker: "
        f"{len(flushes_with_records(with_beat))}, {len(flushes_with_records(without_beat))}"
    )


def test_concurrent_writes_without_the_flush_lock_add_up_exactly(key_ids):
    """Two writers call the batch write at the same moment, round after round, on disjoint events that hit
    the same daily rows; no Redis lock between them. The database's upsert must not lose an increment."""
    rounds, per_batch = 10, 200
    events = [usage_event(index, key_ids) for index in range(2 * rounds * per_batch)]
    parsed = [usage._parse_event(orjson.dumps(event)) for event in events]
    # Each half covers every (day, key, model) row: the two writers always add to the same rows.
    halves = (parsed[: len(parsed) // 2], parsed[len(parsed) // 2 :])
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def writer(mine: list[dict]) -> None:
        try:
            for start in range(0, len(mine), per_batch):
                barrier.wait()
                usage._write_events([dict(event) for event in mine[start : start + per_batch]])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert_stored_exactly(events)
