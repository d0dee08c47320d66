"""The usage pipeline end to end with a real Celery worker and beat: events streamed into Redis end up
in the database exactly once, even when the worker is SIGKILLed in the middle of a flush."""

import asyncio
import time
from decimal import Decimal

import pytest
from django.db.models import Count, Sum

from accounts.models import Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.usage import USAGE_DEAD_KEY, USAGE_LOCK_KEY, USAGE_QUEUE_KEY, usage_record
from aigateway.redis import redis_async, redis_sync
from providers.models import Model

EVENTS = 1000


def usage_event(index: int, *, api_key_id: int) -> dict:
    return {
        "request_id": f"worker-{index:05d}",
        "api_key_id": api_key_id,
        "model": "gpt-worker",
        "provider": "sim",
        "deployment_id": None,
        "endpoint": "chat.completions",
        "stream": True,
        "status_code": 200 if index % 10 else 503,
        "error_type": "" if index % 10 else "upstream_unavailable",
        "prompt_tokens": index,
        "completion_tokens": 2 * index + 1,
        "tokens_estimated": False,
        "ttfb_upstream_ms": 5.0,
        "ttfb_ms": 6.0,
        "duration_ms": 50.0,
        "chunk_count": 3,
        "interval_mean_ms": 1.0,
        "interval_p50_ms": 1.0,
        "interval_p95_ms": 2.0,
        "interval_max_ms": 3.0,
        "zero_interval_share": 0.0,
        "attempts": 1,
        "created_at": time.time(),
    }


async def stream_events_and_kill_mid_flush(worker, *, api_key_id: int) -> bool:
    """Push EVENTS events a few at a time, so pushes land while flushes run; once 40% are queued and some
    were already flushed, SIGKILL the worker the moment it holds the flush lock. Returns whether the kill
    happened during a flush."""
    client = redis_async()
    pushed = 0

    async def produce():
        nonlocal pushed
        for index in range(EVENTS):
            await usage_record(usage_event(index, api_key_id=api_key_id))
            pushed += 1
            if index % 5 == 4:
                await asyncio.sleep(0.01)

    async def kill_during_a_flush() -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pushed >= EVENTS * 0.4 and await client.llen(USAGE_QUEUE_KEY) < pushed:
                if await client.exists(USAGE_LOCK_KEY):
                    worker.kill()
                    return bool(await client.exists(USAGE_LOCK_KEY))
            await asyncio.sleep(0.001)
        return False

    _, killed_mid_flush = await asyncio.gather(produce(), kill_during_a_flush())
    return killed_mid_flush


def wait_until_flushed(*, timeout: float) -> None:
    client = redis_sync()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(USAGE_QUEUE_KEY) == 0 and UsageRecord.objects.count() >= EVENTS:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"not flushed in {timeout}s: {client.llen(USAGE_QUEUE_KEY)} queued, {UsageRecord.objects.count()} stored"
    )


@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_flush_still_stores_every_event_exactly_once(celery_worker):
    Model.objects.create(name="gpt-worker", input_price_per_million=Decimal("1"), output_price_per_million=Decimal("2"))
    tier = Tier.objects.create(name="worker-test")
    api_key = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="worker").api_key
    worker = celery_worker(beat=True, flush_seconds=0.5)

    killed_mid_flush = asyncio.run(stream_events_and_kill_mid_flush(worker, api_key_id=api_key.pk))
    assert killed_mid_flush, "the worker was never caught holding the flush lock"
    assert not worker.alive
    stored_while_down = UsageRecord.objects.count()
    assert 0 < stored_while_down < EVENTS

    worker.restart(wait=True)
    # The dead worker's lock expires (GATEWAY_USAGE_FLUSH_LOCK_SECONDS) before the next flush can run.
    wait_until_flushed(timeout=30)

    totals = UsageRecord.objects.aggregate(
        records=Count("id"),
        distinct=Count("request_id", distinct=True),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost"),
    )
    expected_prompt = sum(range(EVENTS))
    expected_completion = sum(2 * i + 1 for i in range(EVENTS))
    assert totals == {
        "records": EVENTS,
        "distinct": EVENTS,
        "prompt": expected_prompt,
        "completion": expected_completion,
        "cost": Decimal(expected_prompt + 2 * expected_completion) / 1_000_000,
    }
    daily = UsageDaily.objects.filter(api_key=api_key).aggregate(
        requests=Sum("requests"), errors=Sum("errors"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    assert daily == {
        "requests": EVENTS,
        "errors": EVENTS // 10,
        "prompt": expected_prompt,
        "completion": expected_completion,
    }
    assert redis_sync().llen(USAGE_DEAD_KEY) == 0
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
