"""Retention of what grows with traffic and is not history: request log records are deleted
GATEWAY_LOG_RETENTION_DAYS after their call, health-check rows GATEWAY_HEALTH_RETENTION_DAYS after their check,
arena votes GATEWAY_ARENA_RETENTION_DAYS after they were cast (0 keeps them forever). Usage records and daily
totals are history and are never deleted here.

A Celery beat task (accounts.tasks.expire_logs, every GATEWAY_RETENTION_SECONDS) runs `retention_run`: oldest
rows first, in short batches chosen through the tables' timestamp index (aigateway.retention), for at most
RETENTION_RUN_SECONDS, so a backlog of millions (retention shortened, logging turned on for a busy team) is worked
off over several runs without a long lock. Each run logs one line: rows deleted per table, batches, duration.
"""

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from accounts.arena import arena_votes_expire
from accounts.models import RequestLog
from aigateway.retention import Expiry, rows_expire
from providers.health import health_history_expire

logger = logging.getLogger(__name__)

# Rows per batch (one transaction): a request log batch of this size took ~0.1 s on PostgreSQL at a million rows
# (docs/performance.md), short enough for the usage flush's inserts and the admin's reads not to notice it.
RETENTION_BATCH_SIZE = 1000
# A run stops starting batches after this long; the rest waits for the next run. Keeps one of the worker's
# processes from being held for long (the usage flush and alerts share the workers).
RETENTION_RUN_SECONDS = 20.0


def request_logs_expire(*, older_than: datetime, batch_size: int, deadline: float | None = None) -> Expiry:
    """Delete request log records of calls made before `older_than`, in batches through the `created_at` index."""
    return rows_expire(RequestLog, field="created_at", older_than=older_than, batch_size=batch_size, deadline=deadline)


def retention_run(
    *, batch_size: int = RETENTION_BATCH_SIZE, max_seconds: float = RETENTION_RUN_SECONDS
) -> dict[str, Expiry | None]:
    """One retention pass over health-check history (small, first), arena votes and the request log, sharing
    `max_seconds`; a table whose retention is 0 days is left alone (None). Logs one line. A database failure ends
    the pass with a warning: the batches already done stay done, the next run goes on."""
    started = time.monotonic()
    deadline = started + max_seconds
    now = timezone.now()
    plan = {
        "health checks": (settings.GATEWAY_HEALTH_RETENTION_DAYS, health_history_expire),
        "arena votes": (settings.GATEWAY_ARENA_RETENTION_DAYS, arena_votes_expire),
        "request log records": (settings.GATEWAY_LOG_RETENTION_DAYS, request_logs_expire),
    }
    results: dict[str, Expiry | None] = {}
    parts = []
    try:
        for name, (days, expire) in plan.items():
            if days <= 0:
                results[name] = None
                parts.append(f"{name} kept forever")
                continue
            expiry = expire(older_than=now - timedelta(days=days), batch_size=batch_size, deadline=deadline)
            results[name] = expiry
            parts.append(f"{expiry.deleted} {name} deleted (older than {days} days)")
    except DatabaseError as exc:
        logger.warning("retention: database unavailable, the next run goes on: %s", type(exc).__name__)
        # A broken connection must not poison the worker's next task (unless a caller's transaction owns it).
        if not connection.in_atomic_block:
            close_old_connections()
        return results
    done = [expiry for expiry in results.values() if expiry is not None]
    logger.info(
        "retention: %s in %.2fs, %d batches, longest %.3fs%s",
        ", ".join(parts),
        time.monotonic() - started,
        sum(expiry.batches for expiry in done),
        max((expiry.longest_batch_seconds for expiry in done), default=0.0),
        "" if all(expiry.done for expiry in done) else "; more left for the next run",
    )
    return results
