"""A provider's connection pool under more concurrent streams than it has connections.

Waiting for a free connection has its own timeout and its own error (the provider is at capacity),
apart from the connect timeout: first against the shared upstream client directly, then end to end
through a gateway process, where capacity is a 503 before the first byte and failover serves the
request elsewhere.
"""

import asyncio
import logging
import os
import time

import httpx
import orjson
import pytest

from providers.routing import ProviderRoute
from providers.upstream import PoolExhausted, pool_wait_stats, upstream_client, upstream_clients_close
from providers.upstream_transport import UpstreamTransport
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

SLOW = "sim-echo?tokens=20&interval_ms=100"  # about 2 s per stream
MESSAGES = [{"role": "user", "content": "hold the line"}]


def route(base_url: str, *, name: str, max_connections: int) -> ProviderRoute:
    return ProviderRoute(
        id=90_000 + max_connections,
        name=name,
        dialect="openai",
        base_url=base_url,
        api_key="sk-test",
        extra_headers=(),
        timeout_connect=0.5,
        timeout_read=10.0,
        max_connections=max_connections,
    )


@pytest.fixture
async def close_clients():
    yield
    await upstream_clients_close()


async def open_stream(client: httpx.AsyncClient, base_url: str, model: str = SLOW) -> httpx.Response:
    body = orjson.dumps({"model": model, "messages": MESSAGES, "stream": True})
    return await client.send(client.build_request("POST", base_url + "/chat/completions", content=body), stream=True)


async def test_full_pool_is_pool_exhausted_after_the_pool_timeout(fresh_simulator, settings, close_clients, caplog):
    settings.GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS = 0.5
    provider = route(fresh_simulator.openai_base, name="pool-small", max_connections=2)
    client = upstream_client(provider)
    held = [await open_stream(client, fresh_simulator.openai_base) for _ in range(2)]
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="providers.upstream"):
        with pytest.raises(PoolExhausted) as raised:
            await open_stream(client, fresh_simulator.openai_base)
    waited = time.monotonic() - started
    assert 0.4 <= waited < 2.0
    # Its own error, never a connect timeout; still an httpx pool timeout for httpx callers.
    assert not isinstance(raised.value, httpx.ConnectTimeout)
    assert isinstance(raised.value, httpx.PoolTimeout)
    assert "provider pool-small is at capacity (2 connections busy" in str(raised.value)
    assert raised.value.busy == 2
    # The third request never reached the provider.
    assert len(fresh_simulator.requests(model=SLOW)) == 2
    assert "provider pool-small is at capacity: all 2 connections busy, gave up after waiting 0.5" in caplog.text
    stats = pool_wait_stats()["pool-small"]
    assert stats.exhausted == 1 and stats.waits == 1 and 0.4 <= stats.wait_seconds_max < 2.0

    # A waiting request takes the first connection given back.
    waiter = asyncio.ensure_future(open_stream(client, fresh_simulator.openai_base, "sim-echo"))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await held[0].aclose()
    response = await asyncio.wait_for(waiter, 2.0)
    assert response.status_code == 200
    await response.aread()
    await response.aclose()
    stats = pool_wait_stats()["pool-small"]
    assert stats.waits == 2 and stats.exhausted == 1
    assert "pool full (2 connections): waited" in caplog.text
    await held[1].aclose()


async def test_connections_are_given_back_however_a_request_ends(fresh_simulator, settings, close_clients):
    """Failed, cancelled and completed requests all free their connection: a pool of one keeps working."""
    settings.GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS = 0.5
    provider = route(fresh_simulator.openai_base, name="pool-one", max_connections=1)
    client = upstream_client(provider)
    transport = client._transport
    assert isinstance(transport, UpstreamTransport)
    # Refused connection.
    with pytest.raises(httpx.ConnectError):
        await client.post("http://127.0.0.1:9/v1/chat/completions", content=b"{}")
    # Cancelled while waiting for the headers.
    task = asyncio.ensure_future(open_stream(client, fresh_simulator.openai_base, "sim-echo?hang=1"))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Stream closed half-read, and one read to the end.
    response = await open_stream(client, fresh_simulator.openai_base)
    await response.aclose()
    response = await open_stream(client, fresh_simulator.openai_base, "sim-echo")
    await response.aread()
    await response.aclose()
    assert transport.busy == 0
    response = await client.post(
        fresh_simulator.openai_base + "/chat/completions",
        content=orjson.dumps({"model": "sim-echo", "messages": MESSAGES}),
    )
    assert response.status_code == 200
    assert "pool-one" not in pool_wait_stats()


# End to end ---------------------------------------------------------------------------------------


async def _stream(client: httpx.AsyncClient, url: str, key: str) -> dict:
    body = {"model": "pool-model", "messages": MESSAGES, "stream": True}
    started = time.monotonic()
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        raw = await response.aread()
    return {
        "status": response.status_code,
        "provider": response.headers.get("x-gateway-provider"),
        "body": raw,
        "seconds": time.monotonic() - started,
    }


# Each stream lasts ten intervals; GATEWAY_SCALE_TESTS=1 runs the full ten-second streams.
SCALE_INTERVAL_MS = 1000 if os.environ.get("GATEWAY_SCALE_TESTS") else 400


def _concurrent_streams(gateway, key: str, count: int) -> list[dict]:
    async def run():
        limits = httpx.Limits(max_connections=count + 5)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            url = gateway.openai_base + "/chat/completions"
            return await asyncio.gather(*(_stream(client, url, key) for _ in range(count)))

    return asyncio.run(run())


def _text(raw: bytes) -> str:
    parts = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


@pytest.mark.django_db(transaction=True)
def test_full_provider_fails_over_to_the_next_deployment(gateway_factory, fresh_simulator):
    gateway = gateway_factory(GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS="0.5")
    small = provider_create("small", fresh_simulator.openai_base, max_connections=5)
    spare = provider_create("spare", fresh_simulator.openai_base)
    model_create("pool-model", [(small, SLOW, 0), (spare, SLOW, 1)])
    key = key_create("free")
    results = _concurrent_streams(gateway, key, 15)
    assert [r["status"] for r in results] == [200] * 15
    by_provider = sorted(r["provider"] for r in results)
    assert by_provider == ["small"] * 5 + ["spare"] * 10
    texts = {_text(r["body"]) for r in results}
    assert len(texts) == 1 and len(next(iter(texts)).split()) == 20
    events = wait_usage(lambda evs: len(evs) == 15, timeout=10)
    assert sorted(e["status_code"] for e in events) == [200] * 15
    assert all(e["completion_tokens"] == 20 and not e["tokens_estimated"] for e in events)
    assert sorted(e["attempts"] for e in events) == [1] * 5 + [2] * 10
    log = gateway.log()
    assert "ConnectTimeout" not in log
    assert "provider small is at capacity: all 5 connections busy" in log


@pytest.mark.django_db(transaction=True)
def test_full_provider_alone_answers_503_naming_capacity(gateway_factory, fresh_simulator):
    # The breaker is out of the way here: this test is about what the client sees.
    gateway = gateway_factory(GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS="1", GATEWAY_BREAKER_FAILURES="1000")
    small = provider_create("small", fresh_simulator.openai_base, max_connections=5)
    model_create("pool-model", [(small, SLOW, 0)])
    key = key_create("free")
    results = _concurrent_streams(gateway, key, 15)
    served = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] != 200]
    assert len(served) == 5 and all(len(_text(r["body"]).split()) == 20 for r in served)
    assert [r["status"] for r in refused] == [503] * 10
    for r in refused:
        error = orjson.loads(r["body"])["error"]
        assert "provider small is at capacity (5 connections busy" in error["message"], error
        assert "timed out" not in error["message"]
        # After the pool timeout, well before the streams holding the pool end (about 2 s).
        assert 0.9 <= r["seconds"] < 1.9, r["seconds"]
    events = wait_usage(lambda evs: len(evs) == 15, timeout=10)
    assert sorted(e["status_code"] for e in events) == [200] * 5 + [503] * 10
    assert all(e["completion_tokens"] == 0 for e in events if e["status_code"] == 503)
    assert all(e["completion_tokens"] == 20 for e in events if e["status_code"] == 200)
    assert "ConnectTimeout" not in gateway.log()
    # Capacity frees up as the streams end: the next request is served.
    again = _concurrent_streams(gateway, key, 1)
    assert again[0]["status"] == 200


@pytest.mark.django_db(transaction=True)
def test_a_full_pool_does_not_open_the_circuit_breaker(gateway_factory, fresh_simulator):
    """A burst above capacity is not an outage: once it is over, the first deployment serves again
    (an open breaker would send everything to the second one for the whole cool-down)."""
    gateway = gateway_factory(GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS="0.3", GATEWAY_BREAKER_FAILURES="3")
    small = provider_create("small", fresh_simulator.openai_base, max_connections=2)
    spare = provider_create("spare", fresh_simulator.openai_base)
    model_create("pool-model", [(small, SLOW, 0), (spare, SLOW, 1)])
    key = key_create("free")
    results = _concurrent_streams(gateway, key, 8)
    assert sorted(r["provider"] for r in results) == ["small"] * 2 + ["spare"] * 6
    time.sleep(0.6)  # the routing availability cache
    again = _concurrent_streams(gateway, key, 1)
    assert again[0]["provider"] == "small", gateway.log()


@pytest.mark.django_db(transaction=True)
def test_a_thousand_long_streams_on_the_default_pool(gateway_factory, fresh_simulator):
    """The default pool holds a thousand long streams to one provider at once: none waits, none fails.
    (With the old default of 200 connections, 800 of them failed as connect timeouts.)"""
    gateway = gateway_factory()
    provider = provider_create("one", fresh_simulator.openai_base)
    model_create("pool-model", [(provider, f"sim-echo?tokens=10&interval_ms={SCALE_INTERVAL_MS}", 0)])
    key = key_create("free")
    started = time.monotonic()
    results = _concurrent_streams(gateway, key, 1000)
    seconds = time.monotonic() - started
    statuses = sorted({r["status"] for r in results})
    durations = sorted(r["seconds"] for r in results)
    print(f"\nPOOL_SCALE | 1000 streams | statuses {statuses} | wall {seconds:.1f}s | p50 {durations[500]:.1f}s "
          f"| max {durations[-1]:.1f}s")  # fmt: skip
    assert [r["status"] for r in results] == [200] * 1000
    assert all(len(_text(r["body"]).split()) == 10 for r in results)
    assert "at capacity" not in gateway.log() and "ConnectTimeout" not in gateway.log()
