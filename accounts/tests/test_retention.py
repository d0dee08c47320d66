"""Retention of the request log and health-check history (accounts/retention.py, aigateway/retention.py): old rows go
in batches chosen through the timestamp index, within a time budget, recent rows stay, 0 days keeps everything; the
beat task runs in a real worker and logs its line; on PostgreSQL the batches use the index and the viewer's text
search has its trigram index."""

import logging
import os
import re
import subprocess
import sys
import time
import zlib
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import RequestLog
from accounts.retention import request_logs_expire, retention_run
from aigateway.celery import app as celery_app
from providers.health import health_history_expire
from providers.models import HealthCheck, Provider
from tests.support.database import database_is_sqlite
from tests.support.waiting import eventually

TABLE = RequestLog._meta.db_table


def logs_create(ages: list[timedelta], *, prefix: str = "r", text: str = "hello there", batch: int = 2000) -> None:
    """Request log records made `age` ago each, with a small compressed body."""
    now = timezone.now()
    body = zlib.compress(b'{"request": {"model": "gpt-test"}}')
    rows = [
        RequestLog(
            request_id=f"{prefix}-{index}",
            created_at=now - age,
            model="gpt-test",
            endpoint="chat.completions",
            status_code=200,
            level="full",
            body=body,
            stored_bytes=len(body),
            search_text=text,
        )
        for index, age in enumerate(ages)
    ]
    RequestLog.objects.bulk_create(rows, batch_size=batch)


def checks_create(provider: Provider, ages: list[timedelta]) -> None:
    now = timezone.now()
    created = HealthCheck.objects.bulk_create([HealthCheck(provider=provider, ok=True) for _ in ages])
    for check, age in zip(created, ages, strict=True):
        # checked_at is auto_now_add: set afterwards.
        HealthCheck.objects.filter(pk=check.pk).update(checked_at=now - age)


@pytest.fixture
def provider(db) -> Provider:
    return Provider.objects.create(name="retention-sim", dialect="openai", base_url="http://127.0.0.1:9/v1")


@pytest.mark.django_db
def test_old_request_log_records_go_recent_ones_stay():
    logs_create([timedelta(days=45)] * 7 + [timedelta(days=30, minutes=1)] * 2, prefix="old")
    logs_create([timedelta(days=29, hours=23)] * 3 + [timedelta(minutes=1)] * 4, prefix="new")

    expiry = request_logs_expire(older_than=timezone.now() - timedelta(days=30), batch_size=100)

    assert (expiry.deleted, expiry.batches, expiry.done) == (9, 1, True)
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == sorted(f"new-{n}" for n in range(7))


@pytest.mark.django_db
def test_batches_hold_at_most_batch_size_rows_and_delete_without_loading_records():
    logs_create([timedelta(days=40, minutes=n) for n in range(25)], prefix="old")
    logs_create([timedelta(days=1)] * 5, prefix="new")

    with CaptureQueriesContext(connection) as queries:
        expiry = request_logs_expire(older_than=timezone.now() - timedelta(days=30), batch_size=10)

    assert (expiry.deleted, expiry.batches, expiry.done) == (25, 3, True)
    assert RequestLog.objects.count() == 5
    deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3
    assert [len(re.findall(r"\d+", d.split(" IN ", 1)[1])) for d in deletes] == [10, 10, 5]
    # Rows are chosen by id and deleted by id: the bodies and texts are never read.
    selects = [q["sql"] for q in queries if q["sql"].startswith("SELECT")]
    assert selects and not any('"body"' in s or '"search_text"' in s for s in selects)
    # Oldest first: what is left of the expired rows after a partial run is the newest of them.
    logs_create([timedelta(days=40, minutes=n) for n in range(25)], prefix="again")
    request_logs_expire(older_than=timezone.now() - timedelta(days=30), batch_size=10, deadline=0)
    left = set(RequestLog.objects.filter(request_id__startswith="again").values_list("request_id", flat=True))
    assert left == {f"again-{n}" for n in range(15)}


@pytest.mark.django_db
def test_a_run_stops_at_its_time_budget_and_the_next_goes_on():
    logs_create([timedelta(days=40)] * 30)

    first = request_logs_expire(
        older_than=timezone.now() - timedelta(days=30), batch_size=10, deadline=time.monotonic()
    )

    assert (first.deleted, first.batches, first.done) == (10, 1, False)
    assert RequestLog.objects.count() == 20

    rest = request_logs_expire(older_than=timezone.now() - timedelta(days=30), batch_size=10, deadline=None)
    assert (rest.deleted, rest.done) == (20, True)
    assert RequestLog.objects.count() == 0


@pytest.mark.django_db
def test_health_history_goes_after_its_own_retention(provider):
    checks_create(provider, [timedelta(days=15)] * 4 + [timedelta(days=13)] * 2)

    expiry = health_history_expire(older_than=timezone.now() - timedelta(days=14), batch_size=3)

    assert (expiry.deleted, expiry.batches, expiry.done) == (4, 2, True)
    assert HealthCheck.objects.count() == 2
    assert all(timezone.now() - c.checked_at < timedelta(days=14) for c in HealthCheck.objects.all())


@pytest.mark.django_db
def test_retention_run_uses_the_settings_and_logs_one_line(settings, provider, caplog):
    settings.GATEWAY_LOG_RETENTION_DAYS = 30
    settings.GATEWAY_HEALTH_RETENTION_DAYS = 14
    logs_create([timedelta(days=31)] * 5 + [timedelta(days=29)] * 2)
    checks_create(provider, [timedelta(days=15)] * 3 + [timedelta(days=13)])

    with caplog.at_level(logging.INFO, logger="accounts.retention"):
        results = retention_run(batch_size=2)

    assert results["request log records"].deleted == 5
    assert results["health checks"].deleted == 3
    assert (RequestLog.objects.count(), HealthCheck.objects.count()) == (2, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "accounts.retention"]
    assert len(lines) == 1
    assert re.fullmatch(
        r"retention: 3 health checks deleted \(older than 14 days\), 0 arena votes deleted \(older than 365 days\), "
        r"5 request log records deleted "
        r"\(older than 30 days\) in \d+\.\d\ds, 5 batches, longest \d+\.\d{3}s",
        lines[0],
    ), lines[0]


@pytest.mark.django_db
def test_a_run_shares_its_budget_and_says_when_rows_are_left(settings, provider, caplog):
    settings.GATEWAY_LOG_RETENTION_DAYS = 30
    settings.GATEWAY_HEALTH_RETENTION_DAYS = 14
    logs_create([timedelta(days=31)] * 5)
    checks_create(provider, [timedelta(days=15)] * 5)

    with caplog.at_level(logging.INFO, logger="accounts.retention"):
        results = retention_run(batch_size=2, max_seconds=0)

    # The budget is spent after the first batch; each table still makes one batch of progress a run.
    assert (results["health checks"].deleted, results["request log records"].deleted) == (2, 2)
    assert (RequestLog.objects.count(), HealthCheck.objects.count()) == (3, 3)
    assert caplog.records[-1].getMessage().endswith("; more left for the next run")


@pytest.mark.django_db
def test_zero_days_keeps_everything(settings, provider, caplog):
    settings.GATEWAY_LOG_RETENTION_DAYS = 0
    settings.GATEWAY_HEALTH_RETENTION_DAYS = 0
    settings.GATEWAY_ARENA_RETENTION_DAYS = 0
    logs_create([timedelta(days=4000)] * 3)
    checks_create(provider, [timedelta(days=4000)] * 3)

    with caplog.at_level(logging.INFO, logger="accounts.retention"):
        results = retention_run()

    assert results == {"health checks": None, "arena votes": None, "request log records": None}
    assert (RequestLog.objects.count(), HealthCheck.objects.count()) == (3, 3)
    assert "health checks kept forever, arena votes kept forever, request log records kept forever" in (
        caplog.records[-1].getMessage()
    )


def test_negative_retention_stops_the_start():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "aigateway.settings", "GATEWAY_LOG_RETENTION_DAYS": "-1"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )
    assert result.returncode != 0
    assert "GATEWAY_LOG_RETENTION_DAYS" in result.stderr and "keep forever" in result.stderr


def test_the_beat_schedule_runs_the_retention_task():
    entry = settings.CELERY_BEAT_SCHEDULE["expire-logs"]
    assert entry["task"] == "accounts.tasks.expire_logs"
    assert entry["schedule"] == 600.0
    celery_app.loader.import_default_modules()
    assert "accounts.tasks.expire_logs" in celery_app.tasks


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_task_on_its_beat_and_logs_the_run(celery_worker):
    provider = Provider.objects.create(name="retention-worker", dialect="openai", base_url="http://127.0.0.1:9/v1")
    logs_create([timedelta(days=31)] * 1500 + [timedelta(days=1)] * 3)
    checks_create(provider, [timedelta(days=15)] * 3 + [timedelta(days=1)])

    worker = celery_worker(beat=True, loglevel="info", extra_env={"GATEWAY_RETENTION_SECONDS": "0.5"})

    eventually(lambda: RequestLog.objects.count() == 3 and HealthCheck.objects.count() == 1, timeout=30)
    eventually(lambda: "1500 request log records deleted" in worker.log(), timeout=10)
    line = next(line for line in worker.log().splitlines() if "1500 request log records deleted" in line)
    assert "INFO accounts.retention retention: 3 health checks deleted (older than 14 days)" in line
    assert re.search(r"older than 30 days\) in \d+\.\d\ds, 3 batches, longest \d+\.\d{3}s$", line), line


# PostgreSQL: the plans at a size where the planner would rather scan the table if it could.
PLAN_ROWS = 30_000


def _explain(sql: str) -> str:
    with connection.cursor() as cursor:
        if database_is_sqlite():
            cursor.execute("EXPLAIN QUERY PLAN " + sql)
            return "\n".join(str(row[-1]) for row in cursor.fetchall())
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def _analyze() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if database_is_sqlite() else f"ANALYZE {TABLE}")


@pytest.mark.django_db
def test_the_batch_is_chosen_and_deleted_through_indexes():
    # A third expired, as at a steady state a little past a long retention.
    step = timedelta(days=45) / PLAN_ROWS
    logs_create([step * n for n in range(PLAN_ROWS)], batch=5000)
    _analyze()
    older_than = timezone.now() - timedelta(days=30)

    with CaptureQueriesContext(connection) as queries:
        expiry = request_logs_expire(older_than=older_than, batch_size=1000, deadline=0)
    assert expiry.deleted == 1000
    select = next(q["sql"] for q in queries if q["sql"].startswith("SELECT"))
    delete = next(q["sql"] for q in queries if q["sql"].startswith("DELETE"))

    select_plan, delete_plan = _explain(select), _explain(delete)
    if database_is_sqlite():
        assert re.search(r"SEARCH \S+ USING (COVERING )?INDEX accounts_requestlog_created_at\w*", select_plan), (
            select_plan
        )
        assert "SCAN" not in select_plan and "TEMP B-TREE" not in select_plan, select_plan
        assert "USING INTEGER PRIMARY KEY" in delete_plan, delete_plan
    else:
        assert re.search(
            r"Index (Only )?Scan using accounts_requestlog_created_at\w* on accounts_requestlog", select_plan
        ), select_plan
        assert "Seq Scan" not in select_plan + delete_plan, select_plan + delete_plan
        assert re.search(r"Index Scan using accounts_requestlog_pkey", delete_plan), delete_plan
    # The settings are the planner's own: nothing was turned off to get these plans.
    if not database_is_sqlite():
        with connection.cursor() as cursor:
            cursor.execute("SHOW enable_seqscan")
            assert cursor.fetchone()[0] == "on"


@pytest.mark.django_db
def test_health_history_batches_use_the_checked_at_index(provider):
    # A third of the history expired: checks of 20, 10 and 0 days ago.
    now = timezone.now()
    for days in (20, 10, 0):
        created = HealthCheck.objects.bulk_create(
            [HealthCheck(provider=provider, ok=True) for _ in range(PLAN_ROWS // 3)]
        )
        HealthCheck.objects.filter(pk__gte=created[0].pk).update(checked_at=now - timedelta(days=days))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE" if database_is_sqlite() else "ANALYZE providers_healthcheck")

    with CaptureQueriesContext(connection) as queries:
        expiry = health_history_expire(older_than=now - timedelta(days=14), batch_size=1000, deadline=0)
    assert expiry.deleted == 1000
    select = next(q["sql"] for q in queries if q["sql"].startswith("SELECT"))

    plan = _explain(select)
    if database_is_sqlite():
        assert re.search(r"SEARCH \S+ USING (COVERING )?INDEX providers_healthcheck_checked_at\w*", plan), plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert re.search(r"Index (Only )?Scan using providers_healthcheck_checked_at\w*", plan), plan
        assert "Seq Scan" not in plan, plan


def _postgresql_only() -> None:
    if database_is_sqlite():
        pytest.skip("PostgreSQL only (the trigram index)")


@pytest.mark.django_db
def test_the_viewers_text_search_uses_the_trigram_index_on_postgresql():
    _postgresql_only()
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    texts = [" ".join(words[(n + k) % 10] + str(n % 97) for k in range(40)) for n in range(50)]
    logs_create([timedelta(minutes=n) for n in range(PLAN_ROWS)], text=texts[0], batch=5000)
    RequestLog.objects.filter(pk__in=RequestLog.objects.order_by("pk").values("pk")[:3]).update(
        search_text="the Zanzibarite invoice question"
    )
    for n, text in enumerate(texts[1:]):
        RequestLog.objects.filter(pk__in=RequestLog.objects.order_by("pk").values("pk")[1000 + n * 500 :][:500]).update(
            search_text=text
        )
    _analyze()

    found = RequestLog.objects.filter(search_text__icontains="zanzibarITE")
    plan = found.order_by("-created_at").explain()

    assert found.count() == 3
    assert "accounts_requestlog_search_trgm" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.django_db(transaction=True)
def test_the_search_index_migration_builds_concurrently_and_reverses():
    _postgresql_only()
    from importlib import import_module

    migration = import_module("accounts.migrations.0008_request_log_search_index")
    assert migration.Migration.atomic is False

    def index_definition() -> str | None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [migration.INDEX])
            row = cursor.fetchone()
        return row and row[0]

    assert "gin (upper(search_text) gin_trgm_ops)" in index_definition()
    with connection.schema_editor(atomic=False) as editor:
        migration.search_index_drop(None, editor)
    assert index_definition() is None
    # Concurrently: outside any transaction, as migrate runs it.
    with connection.schema_editor(atomic=False) as editor:
        migration.search_index_create(None, editor)
    assert "gin (upper(search_text) gin_trgm_ops)" in index_definition()


@pytest.mark.django_db
def test_no_search_index_on_sqlite():
    if not database_is_sqlite():
        pytest.skip("SQLite only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%search%'")
        assert cursor.fetchall() == []
