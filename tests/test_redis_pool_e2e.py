"""Each gateway process holds at most GATEWAY_REDIS_POOL_SIZE connections to Redis: when Redis stalls under
many concurrent requests, a request that finds every connection busy for GATEWAY_REDIS_POOL_TIMEOUT gets a 503
`gateway_overloaded` in its client's error shape (never admitted, nothing left behind), the process opens no
more connections than its pool, and it serves normally again once Redis answers. A real gateway process, a
private Redis (stalled with CLIENT PAUSE), the simulator upstream, over loopback."""

import asyncio
import time

import httpx
import orjson
import pytest

from accounts.usage import USAGE_INFLIGHT_KEY, USAGE_QUEUE_KEY
from aigateway.embedded_redis import redis_binary
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import gateway_start
from tests.support.sentinel import redis_node

pytestmark = pytest.mark.django_db(transaction=True)

POOL_SIZE = 2
POOL_TIMEOUT = 0.5
STALL_SECONDS = 4.0
TEST_CLIENT = "pool-test"


async def _one(client: httpx.AsyncClient, base: str, key: str, index: int) -> tuple[str, httpx.Response]:
    text = [{"role": "user", "content": f"request {index}"}]
    if index % 2:
        body = {"model": "pool-sim", "max_tokens": 20, "messages": text}
        return "anthropic", await client.post(base + "/v1/messages", json=body, headers={"x-api-key": key})
    body = {"model": "pool-sim", "stream": True, "messages": text}
    headers = {"Authorization": f"Bearer {key}"}
    return "openai", await client.post(base + "/v1/chat/completions", json=body, headers=headers)


async def _burst(base: str, key: str, count: int, first: int = 0) -> list[tuple[str, httpx.Response]]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(_one(client, base, key, first + index) for index in range(count)))


def _gateway_connections(store) -> int:
    return sum(1 for entry in store.client_list(_type="normal") if entry["name"] != TEST_CLIENT)


def _check_overloaded(dialect: str, response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    error = orjson.loads(response.content)
    if dialect == "openai":
        assert error["error"]["code"] == "gateway_overloaded", error
        assert error["error"]["type"] == "server_error", error
    else:
        assert error["type"] == "error" and error["error"]["type"] == "api_error", error
    assert error["error"]["message"].startswith("the gateway is overloaded: no connection to its rate-limit store")
    assert response.headers["x-request-id"]


def test_a_stalled_redis_gets_503s_from_a_full_pool_then_recovers(tmp_path, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("pool-sim", [(sim, "sim-echo?tokens=8&interval_ms=20", 0)])
    key = key_create("pool", rpm=1_000_000, tpm=10**9, max_concurrent=1000)
    node = redis_node(redis_binary(), tmp_path / "redis")
    gateway = None
    try:
        store = node.client()
        store.client_setname(TEST_CLIENT)
        gateway = gateway_start(
            f"redis://127.0.0.1:{node.port}/0",
            tmp_path,
            GATEWAY_REDIS_POOL_SIZE=str(POOL_SIZE),
            GATEWAY_REDIS_POOL_TIMEOUT=str(POOL_TIMEOUT),
        )
        before = asyncio.run(_burst(gateway.url, key, 4))
        assert [response.status_code for _, response in before] == [200] * 4

        # Redis stops answering while 24 requests arrive at once.
        store.execute_command("CLIENT", "PAUSE", int(STALL_SECONDS * 1000), "ALL")
        started = time.monotonic()
        stalled = asyncio.run(_burst(gateway.url, key, 24, first=4))
        stall_took = time.monotonic() - started
        opened = _gateway_connections(store)

        overloaded = [(dialect, response) for dialect, response in stalled if response.status_code == 503]
        served = [(dialect, response) for dialect, response in stalled if response.status_code == 200]
        assert len(overloaded) + len(served) == len(stalled), [r.status_code for _, r in stalled]
        assert len(overloaded) >= len(stalled) // 2, (len(overloaded), len(served))
        assert {dialect for dialect, _ in overloaded} == {"openai", "anthropic"}
        for dialect, response in overloaded:
            _check_overloaded(dialect, response)
        # Bounded: the process opened no connection beyond its pools (the async one; the sync one is idle here).
        assert opened <= POOL_SIZE, opened
        assert stall_took < STALL_SECONDS + 5

        # Redis answers again: served at once, every request, by the same process.
        after = asyncio.run(_burst(gateway.url, key, 10, first=100))
        assert [response.status_code for _, response in after] == [200] * 10
        for dialect, response in [*before, *served, *after]:
            if dialect == "openai":
                assert response.text.rstrip().endswith("data: [DONE]")
            else:
                assert orjson.loads(response.content)["type"] == "message"
        assert gateway.process.poll() is None
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]

        # Side effects: each served request queued its usage once; the refused ones nothing; no lease or marker.
        served_ids = sorted(response.headers["x-request-id"] for _, response in [*before, *served, *after])
        refused_ids = {response.headers["x-request-id"] for _, response in overloaded}
        deadline = time.monotonic() + 10
        while store.llen(USAGE_QUEUE_KEY) < len(served_ids):
            assert time.monotonic() < deadline, (store.llen(USAGE_QUEUE_KEY), len(served_ids))
            time.sleep(0.1)
        queued = [orjson.loads(raw)["request_id"] for raw in store.lrange(USAGE_QUEUE_KEY, 0, -1)]
        assert sorted(queued) == served_ids and not refused_ids & set(queued)
        assert store.hlen(USAGE_INFLIGHT_KEY) == 0
        assert sum(store.zcard(lease_key) for lease_key in store.scan_iter("gw:rl:*:leases")) == 0
        print(
            f"\nredis stalled {STALL_SECONDS:.0f}s with a pool of {POOL_SIZE} ({POOL_TIMEOUT:g}s wait): "
            f"{len(overloaded)} of {len(stalled)} answered 503 gateway_overloaded, {len(served)} served; "
            f"{opened} connections opened; all 10 requests after it served"
        )
    finally:
        if gateway is not None:
            gateway.stop()
        node.stop()
