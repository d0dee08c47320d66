"""Celery tasks for accounts: draining the usage queue into the database."""

from celery import shared_task

from accounts.usage import usage_flush, usage_reconcile

# Beat sends one flush every GATEWAY_USAGE_FLUSH_SECONDS; while no worker runs they pile up in the
# broker, and the stale ones are pointless (the next flush drains everything), so they expire.
FLUSH_TASK_EXPIRES_SECONDS = 60


@shared_task(ignore_result=True, expires=FLUSH_TASK_EXPIRES_SECONDS)
def flush_usage() -> int:
    usage_reconcile()
    return usage_flush(batch_size=1000, max_seconds=10.0)
