"""Stored responses (accounts/stored_responses.py) against real Redis and the test database: an entry reads back as
it was made, the usage flush writes its row (and drops the Redis copy), a malformed entry never costs the usage
record, a delete before or during the flush is never undone, another owner's id reads as unknown, retention
deletes old rows in batches while keeping recent ones (also on a real worker's beat), and admin shows the rows
read-only without their bodies."""

import asyncio
import logging
import re
import zlib
from datetime import timedelta

import orjson
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, StoredResponse, Tier, UsageRecord
from accounts.services import api_key_issue
from accounts.stored_responses import (
    STORED_COPY_PREFIX,
    TOMBSTONE_PREFIX,
    stored_response_delete,
    stored_response_entry,
    stored_response_find,
    stored_response_keep,
    stored_response_view,
    stored_responses_expire,
    stored_responses_write,
)
from accounts.usage import USAGE_DEAD_KEY, USAGE_QUEUE_KEY, usage_flush
from aigateway.celery import app as celery_app
from aigateway.redis import redis_sync
from tests.support.waiting import eventually

RESPONSE = {"id": "resp_1", "object": "response", "status": "completed", "output": [{"type": "message"}]}
INPUT = [{"id": "msg_1", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
CONVERSATION = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
]


@pytest.fixture
def owner_key(db):
    owner = get_user_model().objects.create_user("stored-owner")
    tier = Tier.objects.create(name="stored")
    return api_key_issue(owner=owner, tier=tier, name="stored").api_key


def entry_for(key: ApiKey, response_id: str = "resp_1", **fields) -> dict:
    values = {
        "response_id": response_id,
        "api_key_id": key.pk,
        "user_id": key.owner_id,
        "team_id": None,
        "model": "gpt-test",
        "status": "completed",
        "previous_response_id": "",
        "response": {**RESPONSE, "id": response_id},
        "input_items": INPUT,
        "conversation": CONVERSATION,
    }
    values.update(fields)
    return stored_response_entry(**values)


def queue(key: ApiKey, request_id: str, stored) -> None:
    event = {
        "request_id": request_id,
        "api_key_id": key.pk,
        "user_id": key.owner_id,
        "model": "gpt-test",
        "endpoint": "responses",
        "status_code": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "created_at": timezone.now().timestamp(),
        "stored_response": stored,
    }
    redis_sync().rpush(USAGE_QUEUE_KEY, orjson.dumps(event))


def test_an_entry_reads_back_as_it_was_made_and_travels_as_json():
    entry = stored_response_entry(
        response_id="resp_abc",
        api_key_id=3,
        user_id=7,
        team_id=None,
        model="m" * 300,
        status="completed",
        previous_response_id="resp_before",
        response=RESPONSE,
        input_items=INPUT,
        conversation=CONVERSATION,
    )
    travelled = orjson.loads(orjson.dumps(entry))
    view = stored_response_view(travelled)
    assert (view.response_id, view.user_id, view.api_key_id, view.previous_response_id) == (
        "resp_abc",
        7,
        3,
        "resp_before",
    )
    assert len(view.model) == 128, "cut to the column's size"
    assert view.response() == RESPONSE and view.input_items() == INPUT and view.conversation() == CONVERSATION
    assert entry["stored_bytes"] == sum(len(blob) for blob in view.blobs.values())
    assert all(zlib.decompress(blob) for blob in view.blobs.values()), "compressed"
    for broken in ({**travelled, "response": "not base64!"}, {**travelled, "response_id": "x" * 65}, [], None):
        assert stored_response_view(broken) is None


@pytest.mark.django_db(transaction=True)
def test_the_flush_writes_the_row_and_the_copy_answers_until_then(owner_key):
    entry = entry_for(owner_key)
    asyncio.run(stored_response_keep(entry))
    assert redis_sync().ttl(STORED_COPY_PREFIX + "resp_1") > 500

    before = asyncio.run(stored_response_find(owner_id=owner_key.owner_id, response_id="resp_1"))
    assert before is not None and before.response()["id"] == "resp_1", "read from the Redis copy"
    assert not StoredResponse.objects.exists()

    queue(owner_key, "req-stored-1", entry)
    assert usage_flush() == 1
    row = StoredResponse.objects.get()
    assert (row.response_id, row.api_key_id, row.user_id, row.model, row.status) == (
        "resp_1",
        owner_key.pk,
        owner_key.owner_id,
        "gpt-test",
        "completed",
    )
    assert row.stored_bytes == entry["stored_bytes"] > 0
    assert orjson.loads(zlib.decompress(row.conversation)) == CONVERSATION
    assert UsageRecord.objects.filter(request_id="req-stored-1").exists()
    # Once the row is committed the copy is dropped: the database answers from now on.
    assert not redis_sync().exists(STORED_COPY_PREFIX + "resp_1")
    after = asyncio.run(stored_response_find(owner_id=owner_key.owner_id, response_id="resp_1"))
    assert after is not None and after.input_items() == INPUT and after.response() == before.response()


@pytest.mark.django_db(transaction=True)
def test_another_owners_id_reads_as_unknown_and_cannot_be_deleted(owner_key):
    stranger = get_user_model().objects.create_user("stranger")
    entry = entry_for(owner_key)
    asyncio.run(stored_response_keep(entry))
    assert asyncio.run(stored_response_find(owner_id=stranger.pk, response_id="resp_1")) is None
    assert asyncio.run(stored_response_delete(owner_id=stranger.pk, response_id="resp_1")) is False
    queue(owner_key, "req-stored-2", entry)
    usage_flush()
    assert asyncio.run(stored_response_find(owner_id=stranger.pk, response_id="resp_1")) is None
    assert asyncio.run(stored_response_delete(owner_id=stranger.pk, response_id="resp_1")) is False
    assert StoredResponse.objects.filter(response_id="resp_1").exists(), "still its owner's"
    assert asyncio.run(stored_response_find(owner_id=owner_key.owner_id, response_id="resp_1")) is not None


@pytest.mark.django_db(transaction=True)
def test_a_malformed_entry_never_costs_the_usage_record(owner_key):
    good = entry_for(owner_key, "resp_good")
    broken = [
        "not an entry",
        {**good, "response_id": "resp_" + "x" * 80},
        {**good, "response_id": "not-a-response-id"},
        {**good, "conversation": "%%% not base64"},
        {**good, "user_id": "7"},
        {**good, "created_at": "yesterday"},
    ]
    for index, stored in enumerate(broken):
        queue(owner_key, f"req-broken-{index}", stored)
    queue(owner_key, "req-good", good)

    assert usage_flush() == len(broken) + 1
    assert UsageRecord.objects.count() == len(broken) + 1
    assert list(StoredResponse.objects.values_list("response_id", flat=True)) == ["resp_good"]
    assert redis_sync().llen(USAGE_DEAD_KEY) == 0


@pytest.mark.django_db(transaction=True)
def test_a_response_deleted_before_the_flush_is_never_written(owner_key):
    entry = entry_for(owner_key)
    asyncio.run(stored_response_keep(entry))
    queue(owner_key, "req-deleted", entry)

    assert asyncio.run(stored_response_delete(owner_id=owner_key.owner_id, response_id="resp_1")) is True
    assert asyncio.run(stored_response_find(owner_id=owner_key.owner_id, response_id="resp_1")) is None
    assert not redis_sync().exists(STORED_COPY_PREFIX + "resp_1")

    assert usage_flush() == 1
    assert UsageRecord.objects.filter(request_id="req-deleted").exists(), "the call is booked all the same"
    assert not StoredResponse.objects.exists()
    assert asyncio.run(stored_response_find(owner_id=owner_key.owner_id, response_id="resp_1")) is None
    # Deleting again: there is nothing left to delete.
    assert asyncio.run(stored_response_delete(owner_id=owner_key.owner_id, response_id="resp_1")) is False


@pytest.mark.django_db(transaction=True)
def test_a_delete_that_lands_while_the_flush_writes_is_honoured_after_commit(owner_key):
    """The DELETE found no row yet (the flush had not committed) and its tombstone came after the flush looked:
    the flush deletes the row again once committed."""
    entry = entry_for(owner_key)
    event = {"request_id": "req-race", "api_key_id": owner_key.pk, "user_id": owner_key.owner_id, "team_id": None}
    with transaction.atomic():
        stored_responses_write([event], {"req-race": entry})
        assert StoredResponse.objects.filter(response_id="resp_1").exists()
        redis_sync().set(TOMBSTONE_PREFIX + "resp_1", b"1")
    assert not StoredResponse.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_row_written_outside_the_flush_is_also_found_and_deleted(owner_key):
    """A row whose Redis copy expired long ago: read, listed and deleted from the database alone."""
    event = {"request_id": "req-db", "api_key_id": owner_key.pk, "user_id": owner_key.owner_id, "team_id": None}
    with transaction.atomic():
        stored_responses_write([event], {"req-db": entry_for(owner_key, "resp_db")})
    redis_sync().delete(STORED_COPY_PREFIX + "resp_db")
    found = asyncio.run(stored_response_find(owner_id=owner_key.owner_id, response_id="resp_db"))
    assert found is not None and found.conversation() == CONVERSATION
    assert asyncio.run(stored_response_delete(owner_id=owner_key.owner_id, response_id="resp_db")) is True
    assert not StoredResponse.objects.exists()


def rows_create(key: ApiKey, ages: list[timedelta]) -> None:
    now = timezone.now()
    blob = zlib.compress(b"[]")
    StoredResponse.objects.bulk_create(
        [
            StoredResponse(
                response_id=f"resp_{index}",
                created_at=now - age,
                api_key=key,
                user_id=key.owner_id,
                model="gpt-test",
                status="completed",
                response=blob,
                input_items=blob,
                conversation=blob,
                stored_bytes=3 * len(blob),
            )
            for index, age in enumerate(ages)
        ]
    )


@pytest.mark.django_db
def test_retention_deletes_old_rows_in_batches_and_keeps_recent_ones(owner_key, caplog, settings):
    settings.GATEWAY_RESPONSES_RETENTION_DAYS = 30
    rows_create(owner_key, [timedelta(days=31)] * 5 + [timedelta(days=29)] * 2)

    with caplog.at_level(logging.INFO, logger="accounts.stored_responses"):
        expiry = stored_responses_expire(batch_size=2, max_seconds=60)

    assert (expiry.deleted, expiry.batches, expiry.done) == (5, 3, True)
    assert StoredResponse.objects.count() == 2
    assert all(row.created_at > timezone.now() - timedelta(days=30) for row in StoredResponse.objects.all())
    line = caplog.records[-1].getMessage()
    assert re.fullmatch(
        r"retention: 5 stored responses deleted \(older than 30 days\) in \d+\.\d\ds, 3 batches, longest \d+\.\d{3}s",
        line,
    ), line


@pytest.mark.django_db
def test_retention_within_its_budget_leaves_the_rest_for_the_next_run(owner_key, caplog, settings):
    settings.GATEWAY_RESPONSES_RETENTION_DAYS = 30
    rows_create(owner_key, [timedelta(days=31)] * 5)
    with caplog.at_level(logging.INFO, logger="accounts.stored_responses"):
        expiry = stored_responses_expire(batch_size=2, max_seconds=0)
    assert (expiry.deleted, expiry.done) == (2, False)
    assert StoredResponse.objects.count() == 3
    assert caplog.records[-1].getMessage().endswith("; more left for the next run")


@pytest.mark.django_db
def test_zero_days_keeps_stored_responses_until_deleted(owner_key, settings):
    settings.GATEWAY_RESPONSES_RETENTION_DAYS = 0
    rows_create(owner_key, [timedelta(days=4000)] * 3)
    assert stored_responses_expire() is None
    assert StoredResponse.objects.count() == 3


def test_the_beat_schedule_runs_the_stored_responses_retention():
    entry = settings.CELERY_BEAT_SCHEDULE["expire-stored-responses"]
    assert entry["task"] == "accounts.tasks.expire_stored_responses"
    assert entry["schedule"] == settings.CELERY_BEAT_SCHEDULE["expire-logs"]["schedule"]
    celery_app.loader.import_default_modules()
    assert "accounts.tasks.expire_stored_responses" in celery_app.tasks


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_expires_stored_responses_on_its_beat(owner_key, celery_worker):
    rows_create(owner_key, [timedelta(days=31)] * 3 + [timedelta(days=1)] * 2)
    worker = celery_worker(beat=True, loglevel="info", extra_env={"GATEWAY_RETENTION_SECONDS": "0.5"})
    eventually(lambda: StoredResponse.objects.count() == 2, timeout=30)
    eventually(lambda: "3 stored responses deleted (older than 30 days)" in worker.log(), timeout=10)


@pytest.mark.django_db
def test_the_admin_lists_stored_responses_read_only_without_their_bodies(owner_key, admin_client):
    secret = "the conversation's secret text"
    entry = entry_for(owner_key, "resp_admin", conversation=[{"role": "user", "content": secret}])
    event = {"request_id": "req-admin", "api_key_id": owner_key.pk, "user_id": owner_key.owner_id, "team_id": None}
    stored_responses_write([event], {"req-admin": entry})
    row = StoredResponse.objects.get()

    changelist = admin_client.get(reverse("admin:accounts_storedresponse_changelist")).content.decode()
    assert "resp_admin" in changelist and "stored-owner" in changelist and str(row.stored_bytes) in changelist
    page = admin_client.get(reverse("admin:accounts_storedresponse_change", args=[row.pk]))
    content = page.content.decode()
    assert page.status_code == 200 and "resp_admin" in content and "Previous response id" in content
    assert "Conversation" not in content and "Input items" not in content and secret not in content
    assert admin_client.get(reverse("admin:accounts_storedresponse_add")).status_code == 403
    assert admin_client.post(reverse("admin:accounts_storedresponse_delete", args=[row.pk])).status_code == 403
    assert StoredResponse.objects.exists()
