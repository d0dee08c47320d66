"""The usage report's totals of events not yet flushed are kept in Redis as the events are queued, and
lowered by the flush that writes them: every way an event enters or leaves the queue (the hot path's
batch, events held while Redis was down, lost markers, malformed and rejected events, copies) leaves
exactly the queued events counted. Real Redis, the test database."""

import asyncio
import time
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest
from django.db import IntegrityError

from accounts import usage
from accounts.models import Tier, UsageDaily
from accounts.selectors import usage_report_rows
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.usage import (
    PENDING_TTL_SECONDS,
    USAGE_DEAD_KEY,
    USAGE_QUEUE_KEY,
    usage_flush,
    usage_pending_totals,
    usage_reconcile,
    usage_record,
    usage_retry_buffer_size,
    usage_started,
)
from aigateway.redis import redis_sync

DAY = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TODAY = DAY.date()


@pytest.fixture
def api_key(db):
    tier = Tier.objects.create(name="pending-test")
    return api_key_issue(owner=service_user_get_or_create(), tier=tier, name="pending").api_key


def event(request_id: str, api_key_id: int | None, **fields) -> dict:
    values = {
        "request_id": request_id,
        "api_key_id": api_key_id,
        "model": "gpt-pending",
        "provider": "sim",
        "endpoint": "chat.completions",
        "status_code": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "created_at": DAY.timestamp(),
    }
    values.update(fields)
    return values


def push(*events: dict) -> None:
    async def run():
        await asyncio.gather(*(usage_record(item) for item in events))

    asyncio.run(run())


def pending(api_key, start: date = TODAY, end: date = TODAY) -> dict:
    return usage_pending_totals(api_key_id=api_key.pk, start=start, end=end)


def pending_hashes() -> list[bytes]:
    return list(redis_sync().scan_iter("gw:usage:pending:*"))


def queued_totals(api_key) -> dict:
    """The same totals worked out the slow way, from the queue itself."""
    totals: dict = {}
    for raw in redis_sync().lrange(USAGE_QUEUE_KEY, 0, -1):
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(item, dict) or item.get("api_key_id") != api_key.pk:
            continue
        day = datetime.fromtimestamp(item["created_at"], tz=UTC).date()
        row = totals.setdefault((day, item["model"]), dict.fromkeys(usage.PENDING_TOTALS, 0))
        row["requests"] += 1
        row["errors"] += 1 if item["status_code"] >= 400 else 0
        row["prompt_tokens"] += item["prompt_tokens"]
        row["completion_tokens"] += item["completion_tokens"]
    return totals


def test_queued_events_are_counted_per_day_and_model_and_leave_with_the_flush(api_key):
    other = api_key_issue(owner=api_key.owner, tier=api_key.tier, name="other").api_key
    push(
        *(event(f"a{i}", api_key.pk, prompt_tokens=i, completion_tokens=2 * i) for i in range(40)),
        event("err", api_key.pk, status_code=502, prompt_tokens=0, completion_tokens=0),
        event("other-model", api_key.pk, model="gpt-other:v2"),
        event("next-day", api_key.pk, created_at=(DAY + timedelta(days=1)).timestamp()),
        event("other-key", other.pk),
        event("no-key", None),
    )
    assert pending(api_key) == {
        (TODAY, "gpt-pending"): {"requests": 41, "errors": 1, "prompt_tokens": 780, "completion_tokens": 1560},
        (TODAY, "gpt-other:v2"): {"requests": 1, "errors": 0, "prompt_tokens": 10, "completion_tokens": 5},
    }
    both_days = pending(api_key, TODAY, TODAY + timedelta(days=1))
    assert both_days == queued_totals(api_key)
    assert pending(other) == {(TODAY, "gpt-pending"): {"requests": 1, "errors": 0, "prompt_tokens": 10,
                                                       "completion_tokens": 5}}  # fmt: skip
    assert pending(api_key, TODAY - timedelta(days=5), TODAY - timedelta(days=1)) == {}
    for name in pending_hashes():
        assert 0 < redis_sync().ttl(name) <= PENDING_TTL_SECONDS

    report_before = usage_report_rows(api_key_id=api_key.pk, start=TODAY, end=TODAY + timedelta(days=1))
    assert usage_flush(batch_size=7) == 45
    assert pending(api_key, TODAY, TODAY + timedelta(days=1)) == {} and pending(other) == {}
    assert pending_hashes() == []
    # The report shows the same numbers, now from the database: counted once, not twice, not zero times.
    report_after = usage_report_rows(api_key_id=api_key.pk, start=TODAY, end=TODAY + timedelta(days=1))
    assert report_after == report_before
    assert sum(row["requests"] for row in report_after) == 43


def test_malformed_events_count_nowhere_and_leave_nothing_behind(api_key):
    push(event("ok", api_key.pk))
    redis_sync().rpush(USAGE_QUEUE_KEY, b"not json", orjson.dumps({"request_id": "no-model"}), b"[1]")
    # An event the writer itself finds malformed (a count that is not a number) is queued, never counted.
    push(event("bad-count", api_key.pk, prompt_tokens="many"))
    assert pending(api_key)[(TODAY, "gpt-pending")]["requests"] == 1
    assert usage_flush() == 1
    assert redis_sync().llen(USAGE_DEAD_KEY) == 4
    assert pending(api_key) == {} and pending_hashes() == []


def test_events_the_database_rejects_are_dead_lettered_and_uncounted(api_key, monkeypatch):
    push(event("ok-1", api_key.pk), event("poison", api_key.pk, prompt_tokens=1000), event("ok-2", api_key.pk))
    assert pending(api_key)[(TODAY, "gpt-pending")]["prompt_tokens"] == 1020
    write_events = usage._write_events

    def reject_poison(events):
        if any(item["request_id"] == "poison" for item in events):
            raise IntegrityError("CHECK constraint failed")
        return write_events(events)

    monkeypatch.setattr(usage, "_write_events", reject_poison)
    assert usage_flush() == 2
    assert redis_sync().llen(USAGE_DEAD_KEY) == 1
    assert pending(api_key) == {} and pending_hashes() == []


def test_a_copy_is_counted_while_queued_and_leaves_with_its_original(api_key):
    push(event("dup", api_key.pk), event("dup", api_key.pk))
    assert pending(api_key)[(TODAY, "gpt-pending")]["requests"] == 2  # what is queued, as before
    assert usage_flush() == 1
    assert pending_hashes() == []
    assert UsageDaily.objects.get(api_key=api_key).requests == 1


def test_a_lost_marker_is_counted_once_queued_by_the_reconcile(api_key):
    marker = event("lost-1", api_key.pk, status_code=500, error_type="lost", completion_tokens=0, prompt_tokens=77)

    async def start():
        await usage_started("lost-1", orjson.dumps(marker))

    asyncio.run(start())
    assert pending(api_key) == {}  # admitted, not finished: not usage yet
    assert usage_reconcile(now=time.time() + 3600) == 1
    assert pending(api_key) == {
        (TODAY, "gpt-pending"): {"requests": 1, "errors": 1, "prompt_tokens": 77, "completion_tokens": 0}
    }
    assert usage_reconcile(now=time.time() + 3600) == 0
    assert pending(api_key)[(TODAY, "gpt-pending")]["requests"] == 1
    assert usage_flush() == 1
    assert pending_hashes() == []


def test_events_held_while_redis_was_down_are_counted_when_pushed(api_key, settings, tmp_path, redis_server):
    async def scenario():
        settings.REDIS_URL = f"unix://{tmp_path / 'down.sock'}"
        await usage_record(event("held-1", api_key.pk))
        await usage_record(event("held-2", api_key.pk, status_code=503))
        assert usage_retry_buffer_size() == 2
        settings.REDIS_URL = redis_server
        await usage_record(event("after", api_key.pk))
        for _ in range(60):
            if not usage_retry_buffer_size():
                return
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert usage_retry_buffer_size() == 0
    assert pending(api_key) == {
        (TODAY, "gpt-pending"): {"requests": 3, "errors": 1, "prompt_tokens": 30, "completion_tokens": 15}
    }
    assert pending(api_key) == queued_totals(api_key)


def test_an_expired_hash_is_not_brought_back_negative_by_the_flush(api_key):
    push(event("old", api_key.pk))
    for name in pending_hashes():
        redis_sync().delete(name)  # as if its TTL had passed with the event still queued
    assert usage_flush() == 1
    assert pending_hashes() == []
    push(event("new", api_key.pk))
    assert pending(api_key)[(TODAY, "gpt-pending")]["requests"] == 1
