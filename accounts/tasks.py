"""Celery tasks for accounts: draining the usage queue into the database, budget threshold alerts, retention of
the request log, health-check history and stored responses."""

from celery import shared_task

from accounts.alerts import budget_alerts_run
from accounts.retention import retention_run
from accounts.stored_responses import stored_responses_expire
from accounts.usage import usage_flush, usage_reconcile

# Beat sends one flush every GATEWAY_USAGE_FLUSH_SECONDS; while no worker runs they pile up in the
# broker, and the stale ones are pointless (the next flush drains everything), so they expire.
FLUSH_TASK_EXPIRES_SECONDS = 60


@shared_task(ignore_result=True, expires=FLUSH_TASK_EXPIRES_SECONDS)
def flush_usage() -> int:
    usage_reconcile()
    return usage_flush(batch_size=1000, max_seconds=10.0)


# Like the flush, a run left waiting in the broker is pointless once the next one is sent.
@shared_task(ignore_result=True, expires=FLUSH_TASK_EXPIRES_SECONDS)
def budget_alerts() -> int:
    return budget_alerts_run().created


# Beat sends one every GATEWAY_RETENTION_SECONDS; a run that waited this long in the broker is dropped (the next
# one deletes whatever it would have).
RETENTION_TASK_EXPIRES_SECONDS = 300


@shared_task(ignore_result=True, expires=RETENTION_TASK_EXPIRES_SECONDS)
def expire_logs() -> int:
    """Request log records, health-check history and arena votes past their retention; returns the rows deleted."""
    results = retention_run()
    return sum(expiry.deleted for expiry in results.values() if expiry is not None)


@shared_task(ignore_result=True, expires=RETENTION_TASK_EXPIRES_SECONDS)
def expire_stored_responses() -> int:
    """Stored responses past GATEWAY_RESPONSES_RETENTION_DAYS; returns the rows deleted."""
    expiry = stored_responses_expire()
    return expiry.deleted if expiry is not None else 0
