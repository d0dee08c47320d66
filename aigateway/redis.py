"""Shared Redis clients (async for the hot path, sync for admin, tasks and commands), and the connection
settings every other Redis user of the gateway (Celery's broker, the Channels layer) is built from.

Each client draws on a blocking pool of at most GATEWAY_REDIS_POOL_SIZE connections (one pool per process for
the sync client, one per event loop for the async one). A command that finds every connection in use waits up
to GATEWAY_REDIS_POOL_TIMEOUT seconds for one, then fails with RedisPoolExhausted, which the API answers with a
503 (`redis_pool_exhausted_error`): the connections a fleet opens are bounded by its processes, not its traffic.

With REDIS_SENTINELS set, the clients ask the sentinels for the master of REDIS_SENTINEL_MASTER (redis-py's
sentinel connection pool) and ask again whenever a connection to it breaks, so a failover needs no restart;
REDIS_URL then only lends the master's password, database and TLS options.
"""

import asyncio
import queue
import ssl
from urllib.parse import quote, urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as sentinel
from django.conf import settings
from redis.connection import SSLConnection, parse_url
from redis.exceptions import MaxConnectionsError

from aigateway.errors import GatewayError

# Sentinels answer from memory: one that does not within this long is skipped for the next.
SENTINEL_SOCKET_TIMEOUT = 1.0
COMMAND_SOCKET_TIMEOUT = 5.0
_POOL_EXHAUSTED_RETRY_AFTER_SECONDS = 1

_sync_clients: dict[object, redis.Redis] = {}
_async_clients: dict[tuple[object, int], aredis.Redis] = {}


class RedisPoolExhausted(redis.ConnectionError):
    """Every connection of the process's pool stayed in use for the whole pool wait."""


def _pool_wait_timed_out(exc: redis.ConnectionError) -> bool:
    # redis-py raises a plain ConnectionError("No connection available.") when the wait runs out: the async
    # pool from the asyncio timeout, the sync one while handling queue.Empty. A connection that cannot be made
    # fails otherwise (a TimeoutError, or a ConnectionError raised while handling an OSError).
    return isinstance(exc.__cause__, asyncio.TimeoutError) or isinstance(exc.__context__, queue.Empty)


def _exhausted(pool) -> RedisPoolExhausted:
    return RedisPoolExhausted(
        f"all {pool.max_connections} Redis connections of this process stayed busy for {pool.timeout:g}s "
        "(GATEWAY_REDIS_POOL_SIZE, GATEWAY_REDIS_POOL_TIMEOUT)"
    )


class _SyncPoolWait:
    def get_connection(self, *args, **kwargs):
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            if _pool_wait_timed_out(exc):
                raise _exhausted(self) from None
            raise


class _AsyncPoolWait:
    """The hot path's pool. While a connection is free and nobody waits for one, a command takes and gives it back
    as the unbounded pool does: the blocking pool's condition and timer made that 19 us instead of 6 (measured), so
    only a command that has to wait pays for them, in turn with the others waiting."""

    _waiting = 0

    async def get_connection(self, *args, **kwargs):
        if not self._waiting and self.can_get_connection():
            try:
                return await super(aredis.BlockingConnectionPool, self).get_connection()
            except MaxConnectionsError:
                pass  # taken meanwhile: wait like the others
        self._waiting += 1
        try:
            return await super().get_connection()
        except redis.ConnectionError as exc:
            if _pool_wait_timed_out(exc):
                raise _exhausted(self) from None
            raise
        finally:
            self._waiting -= 1

    async def release(self, connection) -> None:
        if self._waiting:
            await super().release(connection)
            return
        await super(aredis.BlockingConnectionPool, self).release(connection)
        if self._waiting:
            # One began waiting while this connection was being given back.
            async with self._condition:
                self._condition.notify()


class BlockingPool(_SyncPoolWait, redis.BlockingConnectionPool):
    pass


class AsyncBlockingPool(_AsyncPoolWait, aredis.BlockingConnectionPool):
    pass


class SentinelBlockingPool(_SyncPoolWait, sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's sentinel pool (the master looked up for each new connection, connections to a former master
    dropped) with the blocking pool's bound and wait."""


class AsyncSentinelBlockingPool(_AsyncPoolWait, asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    pass


def redis_pool_exhausted_error() -> GatewayError:
    """What a client gets when its request could not get a Redis connection in time: this process is
    overloaded (or Redis answers too slowly), and another process, or a moment later, may do better."""
    return GatewayError(
        503,
        "gateway_overloaded",
        "the gateway is overloaded: no connection to its rate-limit store came free in time; retry shortly",
        headers={"retry-after": str(_POOL_EXHAUSTED_RETRY_AFTER_SECONDS)},
    )


def sentinel_addresses(entries: list[str]) -> list[tuple[str, int]]:
    """REDIS_SENTINELS (`host:port`, `[v6 address]:port`) as (host, port) pairs; ValueError naming a bad one."""
    addresses = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            parts = urlsplit("//" + entry)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or not port or parts.path or parts.username or parts.query or parts.fragment:
            raise ValueError(f"REDIS_SENTINELS: {entry!r} is not host:port")
        addresses.append((host, port))
    return addresses


def master_options(redis_url: str) -> dict:
    """What REDIS_URL says about connecting to a sentinel-managed master: credentials, database and, for
    `rediss://`, TLS with the URL's `ssl_*` options (the certificate verified unless they say otherwise)."""
    parsed = parse_url(redis_url)
    options = {name: parsed[name] for name in ("username", "password") if parsed.get(name)}
    options["db"] = parsed.get("db", 0)
    if parsed.get("connection_class") is SSLConnection:
        options["ssl"] = True
        options.update({name: value for name, value in parsed.items() if name.startswith("ssl_")})
    return options


def sentinel_options(redis_url: str, password: str) -> dict:
    """Connection options for the sentinels themselves: their own password, and TLS when the master has it."""
    options: dict = {"socket_timeout": SENTINEL_SOCKET_TIMEOUT, "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT}
    if password:
        options["password"] = password
    options.update({name: value for name, value in master_options(redis_url).items() if name.startswith("ssl")})
    return options


def redis_host(redis_url: str, sentinels: list[tuple[str, int]], master: str, sentinel_password: str) -> dict:
    """The gateway's Redis in channels_redis's host format: {"address": url}, or the sentinels with the
    master's name and connection options."""
    if not sentinels:
        return {"address": redis_url}
    return {
        "master_name": master,
        "sentinels": list(sentinels),
        "sentinel_kwargs": sentinel_options(redis_url, sentinel_password),
        **master_options(redis_url),
    }


def celery_broker(
    redis_url: str, sentinels: list[tuple[str, int]], master: str, sentinel_password: str
) -> tuple[str, dict, dict | None]:
    """Celery's broker URL, broker transport options and `broker_use_ssl` for the gateway's Redis: kombu's
    `sentinel://` transport when sentinels are configured. A TLS broker verifies the server's certificate
    (left alone, kombu does not unless the URL says `ssl_cert_reqs`); the URL's own `ssl_*` options still win."""
    if not sentinels:
        url = redis_url.replace("unix://", "redis+socket://", 1)
        return url, {}, broker_use_ssl(url)
    options = master_options(redis_url)
    credentials = ""
    if options.get("username") or options.get("password"):
        username, password = (quote(options.get(name, ""), safe="") for name in ("username", "password"))
        credentials = f"{username}:{password}@"
    urls = [f"sentinel://{credentials}{_netloc(host, port)}/{options['db']}" for host, port in sentinels]
    transport = {"master_name": master, "sentinel_kwargs": sentinel_options(redis_url, sentinel_password)}
    use_ssl = None
    if options.get("ssl"):
        use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        use_ssl.update({name: value for name, value in options.items() if name.startswith("ssl_")})
    return ";".join(urls), transport, use_ssl


def redbeat_redis(
    redis_url: str, sentinels: list[tuple[str, int]], master: str, sentinel_password: str
) -> tuple[str, dict, dict | None]:
    """celery-redbeat's `redbeat_redis_url`, `redbeat_redis_options` and `redbeat_redis_use_ssl` (the beat's
    schedule and lock): REDIS_URL, or its sentinel connection (a URL of the `redis-sentinel` scheme says so)."""
    if not sentinels:
        return redis_url, {}, None
    options = master_options(redis_url)
    redbeat = {
        "sentinels": list(sentinels),
        "service_name": master,
        "db": options["db"],
        "socket_timeout": COMMAND_SOCKET_TIMEOUT,
        "sentinel_kwargs": sentinel_options(redis_url, sentinel_password),
    }
    redbeat.update({name: options[name] for name in ("username", "password") if name in options})
    use_ssl = None
    if options.get("ssl"):
        use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        use_ssl.update({name: value for name, value in options.items() if name.startswith("ssl_")})
    return "redis-sentinel://" + master, redbeat, use_ssl


def broker_use_ssl(broker_url: str) -> dict | None:
    """Celery's `broker_use_ssl` for a broker URL given as is: certificate checks on for `rediss://`."""
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED} if broker_url.startswith("rediss://") else None


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_sync_pool(host: dict, *, socket_timeout: float, size: int | None = None, **options) -> redis.ConnectionPool:
    """A bounded blocking pool for a host of `redis_host`'s format."""
    host = {**host, "socket_timeout": socket_timeout, **options, **_pool_options(size)}
    if "address" in host:
        return BlockingPool.from_url(host.pop("address"), **host)
    manager = sentinel.Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs"))
    return SentinelBlockingPool(host.pop("master_name"), manager, is_master=True, **host)


def redis_async_pool(host: dict, *, socket_timeout: float, size: int | None = None, **options) -> aredis.ConnectionPool:
    """`redis_sync_pool` for asyncio (the Channels layer builds its pool with this)."""
    host = {**host, "socket_timeout": socket_timeout, **options, **_pool_options(size)}
    if "address" in host:
        return AsyncBlockingPool.from_url(host.pop("address"), **host)
    manager = asentinel.Sentinel(host.pop("sentinels"), sentinel_kwargs=host.pop("sentinel_kwargs"))
    return AsyncSentinelBlockingPool(host.pop("master_name"), manager, is_master=True, **host)


def _pool_options(size: int | None) -> dict:
    return {
        "max_connections": size or settings.GATEWAY_REDIS_POOL_SIZE,
        "timeout": settings.GATEWAY_REDIS_POOL_TIMEOUT,
    }


def _target(url: str) -> str | tuple:
    if url or not settings.REDIS_SENTINELS:
        return url or settings.REDIS_URL
    return ("sentinel", settings.REDIS_SENTINEL_MASTER, tuple(settings.REDIS_SENTINELS), settings.REDIS_URL)


def _host(target: str | tuple) -> dict:
    if isinstance(target, str):
        return {"address": target}
    return redis_host(
        settings.REDIS_URL, settings.REDIS_SENTINELS, settings.REDIS_SENTINEL_MASTER, settings.REDIS_SENTINEL_PASSWORD
    )


def redis_sync(url: str = "") -> redis.Redis:
    """The process's client for `url` (default: the gateway's Redis, through the sentinels when configured)."""
    target = _target(url)
    client = _sync_clients.get(target)
    if client is None:
        pool = redis_sync_pool(_host(target), socket_timeout=COMMAND_SOCKET_TIMEOUT, health_check_interval=30)
        client = _sync_clients[target] = redis.Redis.from_pool(pool)
    return client


def redis_async(url: str = "") -> aredis.Redis:
    """One async client per event loop (a connection pool cannot cross loops), for `url` (default: the
    gateway's Redis, through the sentinels when configured)."""
    target = _target(url)
    cache_key = (target, id(asyncio.get_running_loop()))
    client = _async_clients.get(cache_key)
    if client is None:
        pool = redis_async_pool(_host(target), socket_timeout=COMMAND_SOCKET_TIMEOUT)
        client = _async_clients[cache_key] = aredis.Redis.from_pool(pool)
    return client
