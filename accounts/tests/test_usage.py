"""The usage pipeline's services against real Redis and the test database: record, flush, aggregates,
and every way a batch can go wrong without losing or double counting an event."""

import asyncio
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import orjson
import pytest
from django.db import IntegrityError, OperationalError

from accounts import usage
from accounts.models import ApiKey, Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.tasks import flush_usage
from accounts.usage import (
    USAGE_DEAD_KEY,
    USAGE_LOCK_KEY,
    USAGE_QUEUE_KEY,
    usage_flush,
    usage_pending_totals,
    usage_record,
    usage_retry_buffer_size,
)
from aigateway.redis import redis_sync
from providers.models import Deployment, Model, Provider

DAY_ONE = datetime(2026, 3, 1, 23, 59, 0, tzinfo=UTC).timestamp()
DAY_TWO = datetime(2026, 3, 2, 0, 0, 30, tzinfo=UTC).timestamp()


@pytest.fixture
def api_key(db):
    tier = Tier.objects.create(name="usage-test")
    return api_key_issue(owner=service_user_get_or_create(), tier=tier, name="usage").api_key


@pytest.fixture
def priced_model(db):
    provider = Provider.objects.create(name="sim", base_url="http://127.0.0.1:1/v1")
    model = Model.objects.create(
        name="gpt-test", input_price_per_million=Decimal("2.5"), output_price_per_million=Decimal("10")
    )
    Deployment.objects.create(model=model, provider=provider, upstream_model="sim-1")
    return model


def usage_event(request_id: str, **fields) -> dict:
    event = {
        "request_id": request_id,
        "api_key_id": None,
        "model": "gpt-test",
        "provider": "sim",
        "deployment_id": None,
        "endpoint": "chat.completions",
        "stream": True,
        "status_code": 200,
        "error_type": "",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "tokens_estimated": False,
        "ttfb_upstream_ms": 12.5,
        "ttfb_ms": 14.0,
        "duration_ms": 250.0,
        "chunk_count": 20,
        "interval_mean_ms": 11.0,
        "interval_p50_ms": 10.0,
        "interval_p95_ms": 20.0,
        "interval_max_ms": 31.0,
        "zero_interval_share": 0.05,
        "attempts": 1,
        "created_at": DAY_ONE,
    }
    event.update(fields)
    return event


def record(*events: dict) -> None:
    async def push():
        for event in events:
            await usage_record(event)

    asyncio.run(push())


def queue_length() -> int:
    return redis_sync().llen(USAGE_QUEUE_KEY)


def test_record_then_flush_writes_exact_records(api_key, priced_model):
    deployment = priced_model.deployments.get()
    event = usage_event("req-1", api_key_id=api_key.pk, deployment_id=deployment.pk)
    record(event, usage_event("req-2", api_key_id=api_key.pk, stream=False, status_code=502, error_type="upstream"))
    assert queue_length() == 2

    assert usage_flush() == 2
    assert queue_length() == 0
    stored = UsageRecord.objects.get(request_id="req-1")
    for name, value in event.items():
        if name != "created_at":
            assert getattr(stored, name) == value, name
    assert stored.created_at == datetime.fromtimestamp(DAY_ONE, tz=UTC)
    failed = UsageRecord.objects.get(request_id="req-2")
    assert (failed.status_code, failed.error_type, failed.stream) == (502, "upstream", False)
    api_key.refresh_from_db()
    assert api_key.last_used_at == datetime.fromtimestamp(DAY_ONE, tz=UTC)


def test_cost_uses_model_prices(api_key, priced_model):
    Model.objects.create(name="half-priced", input_price_per_million=Decimal("1"), output_price_per_million=None)
    record(
        usage_event("priced", prompt_tokens=1000, completion_tokens=500),
        usage_event("odd", prompt_tokens=3, completion_tokens=7),
        usage_event("input-only", model="half-priced", prompt_tokens=2_000_000, completion_tokens=999),
        usage_event("unknown", model="not-in-catalog"),
    )
    usage_flush()
    costs = dict(UsageRecord.objects.values_list("request_id", "cost"))
    # 1000 * 2.5 / 1e6 + 500 * 10 / 1e6
    assert costs["priced"] == Decimal("0.0075")
    assert costs["odd"] == Decimal("0.0000775")
    assert costs["input-only"] == Decimal("2")
    assert costs["unknown"] == Decimal("0")


def test_cached_prompt_tokens_are_kept_apart_and_priced_at_the_cached_price(api_key, priced_model):
    Model.objects.create(
        name="cache-priced",
        input_price_per_million=Decimal("3"),
        output_price_per_million=Decimal("15"),
        cached_input_price_per_million=Decimal("0.3"),
    )
    record(
        usage_event("cached", model="cache-priced", prompt_tokens=1000, completion_tokens=100, cached_tokens=800),
        usage_event("no-cache-price", prompt_tokens=1000, completion_tokens=500, cached_tokens=600),
        usage_event("too-many", model="cache-priced", prompt_tokens=10, completion_tokens=0, cached_tokens=99),
    )
    usage_flush()
    stored = {r.request_id: r for r in UsageRecord.objects.all()}
    assert stored["cached"].cached_tokens == 800 and stored["cached"].prompt_tokens == 1000
    # 200 * 3 + 800 * 0.3 + 100 * 15, per million
    assert stored["cached"].cost == Decimal("0.00234")
    # No cached price: cache reads cost the input price.
    assert stored["no-cache-price"].cost == Decimal("0.0075")
    # Never more cached than prompt tokens.
    assert stored["too-many"].cost == Decimal("0.000003")


def test_daily_aggregates_per_utc_day_key_and_model(api_key, priced_model):
    record(
        usage_event("d1", api_key_id=api_key.pk),
        usage_event("d2", api_key_id=api_key.pk, status_code=429, prompt_tokens=10, completion_tokens=0),
        usage_event("d3", api_key_id=api_key.pk, created_at=DAY_TWO),
        usage_event("d4", api_key_id=api_key.pk, model="other", created_at=DAY_TWO),
    )
    assert usage_flush() == 4
    # A second flush adds to the existing rows.
    record(usage_event("d5", api_key_id=api_key.pk, completion_tokens=1))
    assert usage_flush() == 1

    rows = {
        (row.date, row.model): (row.requests, row.errors, row.prompt_tokens, row.completion_tokens, row.cost)
        for row in UsageDaily.objects.filter(api_key=api_key)
    }
    assert rows == {
        (date(2026, 3, 1), "gpt-test"): (3, 1, 2010, 501, Decimal("0.0100350")),
        (date(2026, 3, 2), "gpt-test"): (1, 0, 1000, 500, Decimal("0.0075")),
        (date(2026, 3, 2), "other"): (1, 0, 1000, 500, Decimal("0")),
    }
    api_key.refresh_from_db()
    assert api_key.last_used_at == datetime.fromtimestamp(DAY_TWO, tz=UTC)


def test_crash_after_commit_before_trim_does_not_double_count(api_key, priced_model, monkeypatch):
    record(*(usage_event(f"c{i}", api_key_id=api_key.pk) for i in range(5)))
    crashing_trim = "return redis.error_reply('worker died before LTRIM')"
    with monkeypatch.context() as patch:
        patch.setattr(usage, "_TRIM_SCRIPT", crashing_trim)
        usage_flush()  # logs the failed trim and returns; the lock is released
    assert not redis_sync().exists(USAGE_LOCK_KEY)
    assert UsageRecord.objects.count() == 5
    assert queue_length() == 5  # committed but not trimmed

    record(usage_event("c-new", api_key_id=api_key.pk))
    assert usage_flush() == 1
    assert queue_length() == 0
    assert UsageRecord.objects.count() == 6
    daily = UsageDaily.objects.get(api_key=api_key)
    assert (daily.requests, daily.prompt_tokens) == (6, 6000)
    assert redis_sync().llen(USAGE_DEAD_KEY) == 0


def test_duplicate_events_in_the_queue_are_written_once(priced_model):
    record(usage_event("dup"), usage_event("dup"), usage_event("other"))
    assert usage_flush() == 2
    assert UsageRecord.objects.filter(request_id="dup").count() == 1


def test_malformed_events_go_to_the_dead_list(priced_model):
    client = redis_sync()
    client.rpush(USAGE_QUEUE_KEY, b"not json", orjson.dumps({"request_id": "no-model"}), b"[1, 2]")
    record(
        usage_event("bad-tokens", prompt_tokens="many"),
        usage_event("bad-id", api_key_id="seven"),
        usage_event("good"),
    )
    assert usage_flush() == 1
    assert queue_length() == 0
    dead = client.lrange(USAGE_DEAD_KEY, 0, -1)
    assert len(dead) == 5 and dead[0] == b"not json"
    assert list(UsageRecord.objects.values_list("request_id", flat=True)) == ["good"]


def test_events_of_deleted_keys_and_deployments_are_kept(api_key, priced_model):
    deployment = priced_model.deployments.get()
    record(
        usage_event("gone", api_key_id=api_key.pk + 1000, deployment_id=deployment.pk + 1000),
        usage_event("here", api_key_id=api_key.pk, deployment_id=deployment.pk),
    )
    assert usage_flush() == 2
    gone = UsageRecord.objects.get(request_id="gone")
    assert (gone.api_key_id, gone.deployment_id, gone.prompt_tokens) == (None, None, 1000)
    assert UsageRecord.objects.get(request_id="here").api_key_id == api_key.pk
    assert UsageDaily.objects.get().requests == 1


def test_database_failure_keeps_events_queued(api_key, priced_model, monkeypatch):
    record(*(usage_event(f"f{i}", api_key_id=api_key.pk) for i in range(3)))

    def database_down(*args, **kwargs):
        raise OperationalError("database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(UsageRecord.objects, "bulk_create", database_down)
        assert usage_flush() == 0
    assert queue_length() == 3
    assert UsageRecord.objects.count() == 0 and UsageDaily.objects.count() == 0
    assert not redis_sync().exists(USAGE_LOCK_KEY)

    assert usage_flush() == 3
    assert queue_length() == 0


def test_an_event_the_database_rejects_does_not_block_the_queue(priced_model, monkeypatch):
    record(usage_event("ok-1"), usage_event("poison"), usage_event("ok-2"))
    write_events = usage._write_events

    def reject_poison(events):
        if any(event["request_id"] == "poison" for event in events):
            raise IntegrityError("CHECK constraint failed")
        return write_events(events)

    monkeypatch.setattr(usage, "_write_events", reject_poison)
    assert usage_flush() == 2
    assert queue_length() == 0
    assert orjson.loads(redis_sync().lrange(USAGE_DEAD_KEY, 0, -1)[0])["request_id"] == "poison"


def test_flush_skips_while_another_flusher_holds_the_lock(priced_model):
    record(usage_event("locked"))
    redis_sync().set(USAGE_LOCK_KEY, "someone-else", px=5000)
    assert usage_flush() == 0
    assert queue_length() == 1
    assert redis_sync().get(USAGE_LOCK_KEY) == b"someone-else"


def test_flush_drains_several_batches(priced_model):
    redis_sync().rpush(USAGE_QUEUE_KEY, *(orjson.dumps(usage_event(f"b{i}")) for i in range(25)))
    assert usage_flush(batch_size=10) == 25
    assert queue_length() == 0


def test_beat_task_drains_the_queue(priced_model):
    assert flush_usage.name == "accounts.tasks.flush_usage"
    record(usage_event("via-task"))
    flush_usage()
    assert UsageRecord.objects.filter(request_id="via-task").exists()


def test_pending_totals_sum_queued_events_of_one_key(api_key):
    other = ApiKey.objects.create(owner=api_key.owner, tier=api_key.tier, name="other", key_hash="x" * 64)
    record(
        usage_event("p1", api_key_id=api_key.pk, prompt_tokens=10, completion_tokens=1),
        usage_event("p2", api_key_id=api_key.pk, prompt_tokens=20, completion_tokens=2, status_code=500),
        usage_event("p3", api_key_id=api_key.pk, created_at=DAY_TWO, model="other"),
        usage_event("p4", api_key_id=other.pk),
        usage_event("p5", api_key_id=api_key.pk, created_at=DAY_TWO + 86400),
    )
    totals = usage_pending_totals(api_key_id=api_key.pk, start=date(2026, 3, 1), end=date(2026, 3, 2))
    assert totals == {
        (date(2026, 3, 1), "gpt-test"): {"requests": 2, "errors": 1, "prompt_tokens": 30, "completion_tokens": 3},
        (date(2026, 3, 2), "other"): {"requests": 1, "errors": 0, "prompt_tokens": 1000, "completion_tokens": 500},
    }


def test_record_holds_events_while_redis_is_down(settings, tmp_path, redis_server):
    async def scenario():
        settings.REDIS_URL = f"unix://{tmp_path / 'down.sock'}"
        started = time.monotonic()
        await usage_record(usage_event("while-down-1"))
        await usage_record(usage_event("while-down-2"))
        assert time.monotonic() - started < 2
        assert usage_retry_buffer_size() == 2
        settings.REDIS_URL = redis_server
        await usage_record(usage_event("after"))
        for _ in range(60):
            if not usage_retry_buffer_size():
                return
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert usage_retry_buffer_size() == 0
    queued = [orjson.loads(item)["request_id"] for item in redis_sync().lrange(USAGE_QUEUE_KEY, 0, -1)]
    assert queued == ["while-down-1", "while-down-2", "after"]


def test_held_events_are_pushed_without_a_new_request(settings, tmp_path, redis_server):
    async def scenario():
        settings.REDIS_URL = f"unix://{tmp_path / 'down.sock'}"
        await usage_record(usage_event("held"))
        settings.REDIS_URL = redis_server
        for _ in range(40):
            if not usage_retry_buffer_size():
                return
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert usage_retry_buffer_size() == 0
    assert queue_length() == 1


def test_flusher_that_lost_its_lock_does_not_trim(priced_model, monkeypatch):
    record(*(usage_event(f"l{i}") for i in range(3)))
    write_events = usage._write_events

    def stall_until_lock_expires(events):
        written = write_events(events)
        # Meanwhile the lock expired and another flusher took it and is reading the same batch.
        redis_sync().set(USAGE_LOCK_KEY, "second-flusher", px=5000)
        record(usage_event("late"))
        return written

    with monkeypatch.context() as patch:
        patch.setattr(usage, "_write_events", stall_until_lock_expires)
        assert usage_flush() == 3
    assert queue_length() == 4
    assert redis_sync().get(USAGE_LOCK_KEY) == b"second-flusher"

    redis_sync().delete(USAGE_LOCK_KEY)
    assert usage_flush() == 1
    assert queue_length() == 0
    assert UsageRecord.objects.count() == 4
