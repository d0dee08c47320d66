"""Reading the usage events a gateway process pushed to the Redis queue."""

import asyncio
import time

import orjson

from accounts.usage import USAGE_INFLIGHT_KEY, USAGE_QUEUE_KEY
from aigateway.redis import redis_sync


def usage_events() -> list[dict]:
    return [orjson.loads(raw) for raw in redis_sync().lrange(USAGE_QUEUE_KEY, 0, -1)]


def _matched(predicate, deadline: float) -> list[dict] | None:
    events = usage_events()
    if predicate(events):
        return events
    if time.monotonic() > deadline:
        raise AssertionError(f"usage events did not match: {events}")
    return None


def wait_usage(predicate, timeout: float = 3.0) -> list[dict]:
    """The queued usage events once `predicate(events)` holds; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (events := _matched(predicate, deadline)) is None:
        time.sleep(0.02)
    return events


async def await_usage(predicate, timeout: float = 3.0) -> list[dict]:
    """`wait_usage` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while (events := _matched(predicate, deadline)) is None:
        await asyncio.sleep(0.02)
    return events


def leases_held() -> int:
    """Concurrency leases held in Redis, over every key."""
    client = redis_sync()
    return sum(client.zcard(key) for key in client.scan_iter("gw:rl:*:leases"))


def markers_held() -> int:
    """Started markers of admitted calls not yet finished."""
    return redis_sync().hlen(USAGE_INFLIGHT_KEY)


def chat_scope(key: str, body: bytes) -> dict:
    """The ASGI scope of a POST /v1/chat/completions with `key` and a JSON `body` of that length, for
    driving the gateway's ASGI application in process."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
