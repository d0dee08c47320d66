"""`db_read` runs a query in a worker thread and closes that thread's connection: with PostgreSQL's pool the
close hands the connection back, so reads on the API path never hold pooled connections."""

import asyncio
import time

import pytest
from django.db import connection

from accounts.models import Tier
from aigateway.db import db_read


def _tier_names() -> list[str]:
    return sorted(Tier.objects.values_list("name", flat=True))


def _checked_out() -> int:
    """Connections of this process's pool not in the pool: in use, or still being opened by its growth."""
    stats = connection.pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


@pytest.mark.django_db(transaction=True)
async def test_db_read_hands_every_connection_back():
    await Tier.objects.acreate(name="db-read")
    pooled = connection.vendor == "postgresql"
    before = _checked_out() if pooled else 0
    for _ in range(3):
        # More reads at once than the thread pool has threads (and than the connection pool's default size).
        results = await asyncio.gather(*(db_read(_tier_names) for _ in range(30)))
        assert results == [["db-read"]] * 30
    if not pooled:
        return
    assert connection.pool.get_stats()["requests_num"] >= 90
    # The pool may still be opening a connection it decided to add while reads were waiting.
    deadline = time.monotonic() + 5
    while _checked_out() > before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _checked_out() == before
