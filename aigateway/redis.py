"""Shared Redis clients (async for the hot path, sync for admin, tasks and commands)."""

import redis
import redis.asyncio as aredis
from django.conf import settings

_sync_clients: dict[str, redis.Redis] = {}
_async_clients: dict[tuple[str, int], aredis.Redis] = {}


def redis_sync(url: str = "") -> redis.Redis:
    """The process's client for `url` (default: REDIS_URL)."""
    url = url or settings.REDIS_URL
    client = _sync_clients.get(url)
    if client is None:
        client = _sync_clients[url] = redis.Redis.from_url(url, socket_timeout=5, health_check_interval=30)
    return client


def redis_async(url: str = "") -> aredis.Redis:
    """One async client per event loop (a connection pool cannot cross loops), for `url` (default: REDIS_URL)."""
    import asyncio

    url = url or settings.REDIS_URL
    loop = asyncio.get_running_loop()
    cache_key = (url, id(loop))
    client = _async_clients.get(cache_key)
    if client is None:
        # Room for every command of a process under load (streams renew leases, push usage...): past it
        # a command fails with "Too many connections", which reads as Redis being down. Not a blocking
        # pool: its wait costs every command a lock and a timer, measured at several percent of throughput.
        pool = aredis.ConnectionPool.from_url(
            url, socket_timeout=5, max_connections=settings.GATEWAY_REDIS_MAX_CONNECTIONS
        )
        client = _async_clients[cache_key] = aredis.Redis.from_pool(pool)
    return client
