"""A call booked as `lost` while it was still running (its marker's deadline passed: a call longer than
GATEWAY_USAGE_LOST_AFTER_SECONDS, or a process that stalled) is booked with its real usage once it
finishes: the real event replaces the lost record and the daily totals follow. A real gateway process,
a real Celery worker flushing, real Redis, the simulator over loopback."""

import threading
import time
from decimal import Decimal

import httpx
import pytest
from django.db.models import Sum

from accounts.models import UsageDaily, UsageRecord
from accounts.usage import USAGE_INFLIGHT_KEY, USAGE_QUEUE_KEY, usage_reconcile
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "a long answer please"}]
SLOW = "sim-echo?tokens=25&interval_ms=120"


def _daily() -> dict:
    return UsageDaily.objects.aggregate(
        requests=Sum("requests"), errors=Sum("errors"), prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"), cost=Sum("cost"),
    )  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_call_booked_lost_while_running_is_booked_for_real_when_it_ends(
    gateway, fresh_simulator, celery_worker, stream
):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-slow", [(sim, SLOW, 0)], input_price_per_million=2, output_price_per_million=8)
    key = key_create("two-slots", max_concurrent=2)
    headers = {"Authorization": f"Bearer {key}"}
    url = gateway.openai_base + "/chat/completions"
    celery_worker(flush_seconds=0.3)

    quick = httpx.post(url, json={"model": "sim-slow", "messages": MESSAGES}, headers=headers, timeout=30)
    assert quick.status_code == 200
    eventually(lambda: UsageRecord.objects.count() == 1, timeout=15, what="the first call on the books")

    answer: dict = {}

    def long_call() -> None:
        body = {"model": "sim-slow", "messages": MESSAGES, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        response = httpx.post(url, json=body, headers=headers, timeout=30)
        answer["response"] = response

    caller = threading.Thread(target=long_call)
    caller.start()
    eventually(lambda: redis_sync().hlen(USAGE_INFLIGHT_KEY) == 1, timeout=10, what="the long call's marker")
    # Its deadline counts as passed: the reconcile books it as lost and the worker flushes that record.
    assert usage_reconcile(now=time.time() + 3600) == 1
    eventually(lambda: UsageRecord.objects.filter(error_type="lost").exists(), timeout=15, what="the lost record")
    lost = UsageRecord.objects.get(error_type="lost")
    assert (lost.status_code, lost.completion_tokens, lost.tokens_estimated) == (500, 0, True)
    assert caller.is_alive(), "the call ended before it was booked lost: the upstream is too fast"
    assert _daily()["requests"] == 2 and _daily()["errors"] == 1

    caller.join(30)
    response = answer["response"]
    assert response.status_code == 200
    assert response.headers["x-request-id"] == lost.request_id
    eventually(
        lambda: not UsageRecord.objects.filter(error_type="lost").exists() and redis_sync().llen(USAGE_QUEUE_KEY) == 0,
        timeout=15,
        what="the lost record replaced",
    )
    record = UsageRecord.objects.get(request_id=lost.request_id)
    assert record.pk == lost.pk and UsageRecord.objects.count() == 2
    assert (record.status_code, record.error_type, record.completion_tokens) == (200, "", 25)
    assert record.stream is stream and record.deployment_id is not None and record.duration_ms > 0
    first = UsageRecord.objects.exclude(pk=record.pk).get()
    assert _daily() == {
        "requests": 2,
        "errors": 0,
        "prompt": first.prompt_tokens + record.prompt_tokens,
        "completion": first.completion_tokens + 25,
        "cost": first.cost + record.cost,
    }
    assert record.cost == (record.prompt_tokens * 2 + 25 * 8) / Decimal(1_000_000)
