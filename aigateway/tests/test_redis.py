"""The gateway's Redis pools against the test Redis: bounded, waiting for a free connection for the pool timeout
and then failing with RedisPoolExhausted (a Redis that cannot be reached fails otherwise); and the connection
settings derived for sentinels and TLS (pure functions)."""

import ssl
import time

import pytest
import redis

from aigateway.redis import (
    AsyncBlockingPool,
    BlockingPool,
    RedisPoolExhausted,
    celery_broker,
    redbeat_redis,
    redis_host,
    sentinel_addresses,
)

WAIT = 0.3


def test_a_busy_sync_pool_waits_then_raises_pool_exhausted(redis_server):
    pool = BlockingPool.from_url(redis_server, max_connections=1, timeout=WAIT)
    held = pool.get_connection()
    started = time.monotonic()
    with pytest.raises(RedisPoolExhausted, match="all 1 Redis connections of this process stayed busy for 0.3s"):
        redis.Redis.from_pool(pool).ping()
    assert WAIT <= time.monotonic() - started < WAIT + 1.0
    pool.release(held)
    assert redis.Redis.from_pool(pool).ping()
    pool.disconnect()


async def test_a_busy_async_pool_waits_then_raises_pool_exhausted(redis_server):
    import redis.asyncio as aredis

    pool = AsyncBlockingPool.from_url(redis_server, max_connections=1, timeout=WAIT)
    client = aredis.Redis.from_pool(pool)
    held = await pool.get_connection()
    started = time.monotonic()
    with pytest.raises(RedisPoolExhausted):
        await client.ping()
    assert WAIT <= time.monotonic() - started < WAIT + 1.0
    await pool.release(held)
    assert await client.ping()
    await client.aclose()


async def test_commands_beyond_the_pool_wait_their_turn(redis_server):
    import asyncio

    import redis.asyncio as aredis

    pool = AsyncBlockingPool.from_url(redis_server, max_connections=1, timeout=5)
    client = aredis.Redis.from_pool(pool)
    held = await pool.get_connection()
    waiting = [asyncio.create_task(client.incr("pool-turns")) for _ in range(300)]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in waiting)
    await pool.release(held)
    started = time.monotonic()
    await asyncio.gather(*waiting)
    assert time.monotonic() - started < 2.0
    assert int(await client.get("pool-turns")) == 300
    assert (len(pool._in_use_connections), len(pool._available_connections)) == (0, 1)
    await client.aclose()


async def test_an_unreachable_redis_is_not_pool_exhaustion(tmp_path):
    import redis.asyncio as aredis

    url = f"unix://{tmp_path / 'nothing.sock'}"
    with pytest.raises(redis.ConnectionError) as sync_error:
        redis.Redis.from_pool(BlockingPool.from_url(url, max_connections=1, timeout=WAIT)).ping()
    client = aredis.Redis.from_pool(AsyncBlockingPool.from_url(url, max_connections=1, timeout=WAIT))
    with pytest.raises(redis.ConnectionError) as async_error:
        await client.ping()
    assert not isinstance(sync_error.value, RedisPoolExhausted)
    assert not isinstance(async_error.value, RedisPoolExhausted)


def test_sentinel_addresses():
    assert sentinel_addresses(["10.0.0.1:26379", " s2.internal:26380 ", "[::1]:26381", ""]) == [
        ("10.0.0.1", 26379),
        ("s2.internal", 26380),
        ("::1", 26381),
    ]
    for bad in ("10.0.0.1", "host:", "host:port", "user@host:1", "host:1/0", "host:99999"):
        with pytest.raises(ValueError, match="is not host:port"):
            sentinel_addresses([bad])


SENTINELS = [("10.0.0.1", 26379), ("::1", 26380)]


def test_sentinel_settings_for_channels_celery_and_beat():
    url = "redis://app:p%40ss@ignored:6379/2"
    assert redis_host(url, SENTINELS, "main", "s3cret") == {
        "master_name": "main",
        "sentinels": SENTINELS,
        "sentinel_kwargs": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "password": "s3cret"},
        "username": "app",
        "password": "p@ss",
        "db": 2,
    }
    broker, transport, use_ssl = celery_broker(url, SENTINELS, "main", "s3cret")
    assert broker == "sentinel://app:p%40ss@10.0.0.1:26379/2;sentinel://app:p%40ss@[::1]:26380/2"
    assert transport["master_name"] == "main" and transport["sentinel_kwargs"]["password"] == "s3cret"
    assert use_ssl is None
    beat_url, beat, beat_ssl = redbeat_redis(url, SENTINELS, "main", "s3cret")
    assert beat_url.startswith("redis-sentinel://") and beat_ssl is None
    assert (beat["service_name"], beat["db"], beat["password"], beat["sentinels"]) == ("main", 2, "p@ss", SENTINELS)


def test_tls_is_verified_by_default_and_the_urls_options_kept():
    plain = "rediss://redis.internal:6380/0"
    assert celery_broker(plain, [], "", "") == (plain, {}, {"ssl_cert_reqs": ssl.CERT_REQUIRED})
    assert celery_broker("redis://r:6379/0", [], "", "")[2] is None
    assert celery_broker("unix:///run/redis.sock", [], "", "")[0] == "redis+socket:///run/redis.sock"

    with_ca = "rediss://:pw@ignored:6380/1?ssl_ca_certs=/etc/ssl/redis-ca.pem"
    host = redis_host(with_ca, SENTINELS, "main", "")
    assert host["ssl"] is True and host["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem"
    assert host["sentinel_kwargs"]["ssl"] is True  # the sentinels are reached over TLS as well
    _, _, use_ssl = celery_broker(with_ca, SENTINELS, "main", "")
    assert use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ssl/redis-ca.pem"}
    # Turning the check off is the URL's explicit choice.
    _, _, use_ssl = celery_broker(plain + "?ssl_cert_reqs=none", SENTINELS, "main", "")
    assert use_ssl["ssl_cert_reqs"] == "none"
