"""Deleting rows past their retention in short batches, oldest first, each batch chosen through the index on
the rows' timestamp column.

A batch is one short transaction: the primary keys of the oldest expired rows (a range scan of the timestamp's
index, in its order, that stops after the batch), then a delete of exactly those rows by primary key. No statement
scans the table or holds its locks for long, so a backlog of millions of rows is worked off over several runs
while the gateway keeps writing and the admin keeps reading. Apps call `rows_expire` for their own tables.
"""

import time
from dataclasses import dataclass
from datetime import datetime

from django.db import models, transaction


@dataclass
class Expiry:
    """What one run deleted from one table."""

    table: str
    deleted: int = 0
    batches: int = 0
    seconds: float = 0.0
    longest_batch_seconds: float = 0.0
    # False when the run's time budget ran out with expired rows left for the next run.
    done: bool = True


def expired_batch(model: type[models.Model], *, field: str, older_than: datetime, batch_size: int) -> models.QuerySet:
    """The primary keys of the `batch_size` oldest rows whose `field` is before `older_than`. Ordered by the
    indexed `field`, so the database walks that index from its start and stops after the batch."""
    expired = model._base_manager.filter(**{f"{field}__lt": older_than}).order_by(field)
    return expired.values_list("pk", flat=True)[:batch_size]


def rows_expire(
    model: type[models.Model], *, field: str, older_than: datetime, batch_size: int, deadline: float | None = None
) -> Expiry:
    """Delete `model`'s rows whose `field` (an indexed timestamp) is before `older_than`, `batch_size` at a
    time, each batch in its own transaction, until none is left or `time.monotonic()` passes `deadline`."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    expiry = Expiry(table=model._meta.db_table)
    started = time.monotonic()
    while True:
        batch_started = time.monotonic()
        with transaction.atomic():
            ids = list(expired_batch(model, field=field, older_than=older_than, batch_size=batch_size))
            # A plain DELETE by primary key: the model has no delete signals nor rows that cascade, so Django
            # deletes without loading the rows first.
            deleted = model._base_manager.filter(pk__in=ids).delete()[0] if ids else 0
        batch_seconds = time.monotonic() - batch_started
        expiry.deleted += deleted
        if ids:
            expiry.batches += 1
            expiry.longest_batch_seconds = max(expiry.longest_batch_seconds, batch_seconds)
        if len(ids) < batch_size:
            expiry.done = True
            break
        if deadline is not None and time.monotonic() >= deadline:
            expiry.done = False
            break
    expiry.seconds = time.monotonic() - started
    return expiry
