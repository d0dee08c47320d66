"""A `lost` record (the reconcile's record of a request whose process seemed dead) is replaced by the
request's real event when that arrives after all, and the daily aggregates move with it; a real event
pushed twice, or a lost marker behind a real record, still counts once. Real Redis, the test database
(SQLite, or PostgreSQL under `make test-postgres`)."""

import asyncio
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest

from accounts.models import Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.usage import (
    USAGE_QUEUE_KEY,
    usage_flush,
    usage_reconcile,
    usage_record,
    usage_started,
)
from aigateway.redis import redis_sync
from providers.models import Deployment, Model, Provider

DAY_ONE = datetime(2026, 3, 1, 23, 59, 50, tzinfo=UTC).timestamp()
DAY_TWO = datetime(2026, 3, 2, 0, 0, 20, tzinfo=UTC).timestamp()


@pytest.fixture
def api_key(db):
    tier = Tier.objects.create(name="lost-test")
    return api_key_issue(owner=service_user_get_or_create(), tier=tier, name="lost").api_key


@pytest.fixture
def deployment(db):
    provider = Provider.objects.create(name="sim", base_url="http://127.0.0.1:1/v1")
    model = Model.objects.create(
        name="gpt-lost", input_price_per_million=Decimal(2), output_price_per_million=Decimal(8)
    )
    Model.objects.create(name="gpt-fallback", input_price_per_million=Decimal(1), output_price_per_million=Decimal(1))
    return Deployment.objects.create(model=model, provider=provider, upstream_model="sim-1")


def real_event(request_id: str, api_key_id: int, **fields) -> dict:
    event = {
        "request_id": request_id,
        "api_key_id": api_key_id,
        "model": "gpt-lost",
        "provider": "sim",
        "deployment_id": None,
        "endpoint": "chat.completions",
        "stream": False,
        "status_code": 200,
        "error_type": "",
        "prompt_tokens": 30,
        "completion_tokens": 25,
        "tokens_estimated": False,
        "duration_ms": 4000.0,
        "attempts": 1,
        "created_at": DAY_ONE,
    }
    event.update(fields)
    return event


def lost_marker(request_id: str, api_key_id: int, **fields) -> dict:
    """What the relay stores at admission (streaming.relay.call_marker)."""
    marker = real_event(request_id, api_key_id, **fields)
    marker.update(status_code=500, error_type="lost", completion_tokens=0, tokens_estimated=True, duration_ms=None)
    marker.update(fields)
    return marker


def reconcile_into_lost_record(marker: dict) -> None:
    """Store the marker as the relay does, let its deadline pass, reconcile and flush it into a record."""

    async def start():
        await usage_started(marker["request_id"], orjson.dumps(marker))

    asyncio.run(start())
    assert usage_reconcile(now=time.time() + 3600) == 1
    assert usage_flush() == 1


def push(*events: dict) -> None:
    async def run():
        for event in events:
            await usage_record(event)

    asyncio.run(run())


def daily(api_key, day: date, model: str = "gpt-lost") -> dict:
    row = UsageDaily.objects.filter(api_key=api_key, date=day, model=model).values(
        "requests", "errors", "prompt_tokens", "completion_tokens", "cost"
    )
    return row.get() if row else {}


def test_a_late_real_event_replaces_the_lost_record_and_corrects_the_daily_totals(api_key, deployment):
    reconcile_into_lost_record(lost_marker("late", api_key.pk, prompt_tokens=400))
    lost = UsageRecord.objects.get(request_id="late")
    assert (lost.status_code, lost.error_type, lost.completion_tokens, lost.cost) == (500, "lost", 0, Decimal("0.0008"))
    assert daily(api_key, date(2026, 3, 1)) == {
        "requests": 1, "errors": 1, "prompt_tokens": 400, "completion_tokens": 0, "cost": Decimal("0.0008"),
    }  # fmt: skip

    push(real_event("late", api_key.pk, deployment_id=deployment.pk, created_at=DAY_ONE + 4, ttfb_ms=120.0))
    assert usage_flush() == 1
    record = UsageRecord.objects.get(request_id="late")
    assert record.pk == lost.pk
    assert (record.status_code, record.error_type, record.tokens_estimated) == (200, "", False)
    assert (record.prompt_tokens, record.completion_tokens) == (30, 25)
    assert record.cost == Decimal("0.00026")  # 30 x 2 + 25 x 8 per million
    assert record.deployment_id == deployment.pk and record.ttfb_ms == 120.0 and record.duration_ms == 4000.0
    assert record.created_at == datetime.fromtimestamp(DAY_ONE + 4, tz=UTC)
    assert UsageRecord.objects.count() == 1
    assert daily(api_key, date(2026, 3, 1)) == {
        "requests": 1, "errors": 0, "prompt_tokens": 30, "completion_tokens": 25, "cost": Decimal("0.00026"),
    }  # fmt: skip
    api_key.refresh_from_db()
    assert api_key.last_used_at == datetime.fromtimestamp(DAY_ONE + 4, tz=UTC)

    # The same real event once more: a copy, dropped; and a lost marker behind the real record: dropped.
    push(real_event("late", api_key.pk, completion_tokens=999), lost_marker("late", api_key.pk))
    assert usage_flush() == 0
    assert UsageRecord.objects.get(request_id="late").completion_tokens == 25
    assert daily(api_key, date(2026, 3, 1))["requests"] == 1
    assert redis_sync().llen(USAGE_QUEUE_KEY) == 0


def test_the_real_event_moves_the_daily_totals_across_days_and_models(api_key, deployment):
    """Admitted just before midnight (the marker's day), finished after it, by a fallback model."""
    reconcile_into_lost_record(lost_marker("midnight", api_key.pk, prompt_tokens=100))
    push(real_event("midnight", api_key.pk, model="gpt-fallback", created_at=DAY_TWO, status_code=502,
                    error_type="upstream_unavailable", prompt_tokens=0, completion_tokens=0))  # fmt: skip
    assert usage_flush() == 1
    assert daily(api_key, date(2026, 3, 1)) == {
        "requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": Decimal(0),
    }  # fmt: skip
    assert daily(api_key, date(2026, 3, 2), "gpt-fallback") == {
        "requests": 1, "errors": 1, "prompt_tokens": 0, "completion_tokens": 0, "cost": Decimal(0),
    }  # fmt: skip
    record = UsageRecord.objects.get(request_id="midnight")
    assert (record.model, record.status_code, record.error_type) == ("gpt-fallback", 502, "upstream_unavailable")


def test_lost_and_real_in_one_batch_keep_the_real_one_in_either_order(api_key, deployment):
    push(
        lost_marker("lost-first", api_key.pk),
        real_event("lost-first", api_key.pk),
        real_event("real-first", api_key.pk, completion_tokens=7),
        lost_marker("real-first", api_key.pk),
    )
    assert usage_flush() == 2
    records = {r.request_id: (r.status_code, r.completion_tokens) for r in UsageRecord.objects.all()}
    assert records == {"lost-first": (200, 25), "real-first": (200, 7)}
    assert daily(api_key, date(2026, 3, 1)) == {
        "requests": 2, "errors": 0, "prompt_tokens": 60, "completion_tokens": 32,
        "cost": Decimal("0.00037600"),
    }  # fmt: skip


def test_a_lost_record_replaced_by_one_flush_is_not_corrected_again_by_another(api_key, deployment):
    """Two flushers that both read the real event (the first one's lock expired before its trim): the
    second finds no lost record left and leaves the daily totals alone."""
    from accounts import usage

    reconcile_into_lost_record(lost_marker("twice", api_key.pk, prompt_tokens=400))
    push(real_event("twice", api_key.pk))
    batch = usage._read_batch(redis_sync(), 100)
    assert usage._write_events([dict(event) for event in batch.events]) == 1
    assert usage._write_events([dict(event) for event in batch.events]) == 0
    assert daily(api_key, date(2026, 3, 1)) == {
        "requests": 1, "errors": 0, "prompt_tokens": 30, "completion_tokens": 25, "cost": Decimal("0.00026"),
    }  # fmt: skip
