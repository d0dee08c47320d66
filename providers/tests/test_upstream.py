"""The shared upstream client (httpx API over aiohttp, providers.upstream_transport) against the real simulator."""

import time

import httpx
import orjson
import pytest

from providers.routing import ProviderRoute
from providers.upstream import upstream_client, upstream_clients_close
from tests.support.ports import free_port


def route(base_url: str, *, read: float = 5.0, connect: float = 2.0) -> ProviderRoute:
    return ProviderRoute(
        id=1,
        name="sim",
        dialect="openai",
        base_url=base_url,
        api_key="sk-test",
        extra_headers=(),
        timeout_connect=connect,
        timeout_read=read,
        max_connections=10,
    )


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    await upstream_clients_close()


def chat(model: str, stream: bool = False) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})


async def test_one_client_per_provider_and_loop_reused(fresh_simulator):
    provider = route(fresh_simulator.openai_base)
    assert upstream_client(provider) is upstream_client(provider)
    changed = route(fresh_simulator.openai_base, read=9.0)
    assert upstream_client(changed) is not upstream_client(provider)


async def test_non_stream_round_trip_and_headers(fresh_simulator):
    client = upstream_client(route(fresh_simulator.openai_base))
    response = await client.post(
        fresh_simulator.openai_base + "/chat/completions",
        content=chat("sim-echo"),
        headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    seen = fresh_simulator.requests()[-1]
    assert seen["headers"]["accept-encoding"] == "identity"
    assert seen["auth_present"]


async def test_stream_chunks_arrive_one_by_one(fresh_simulator):
    client = upstream_client(route(fresh_simulator.openai_base))
    request = client.build_request(
        "POST",
        fresh_simulator.openai_base + "/chat/completions",
        content=chat("sim-echo?tokens=5&interval_ms=150", stream=True),
    )
    response = await client.send(request, stream=True)
    reads = []
    async for chunk in response.aiter_bytes():
        reads.append((time.perf_counter(), chunk))
    await response.aclose()
    assert sum(chunk.count(b"data: ") for _, chunk in reads) == 8  # role, 5 tokens, finish, [DONE]
    # The five paced tokens come in five reads, ~150 ms apart (role and finish events, sent with no
    # pause around the first and last token, may share their reads).
    token_reads = [at for at, chunk in reads if b'"content":"' in chunk.replace(b'"content":""', b"")]
    assert len(token_reads) == 5
    gaps = [b - a for a, b in zip(token_reads, token_reads[1:], strict=False)]
    assert all(0.08 < gap < 0.4 for gap in gaps), gaps


async def test_connection_refused_is_connect_error():
    client = upstream_client(route(f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{free_port()}/v1/chat/completions", content=b"{}")


async def test_hang_is_read_timeout_and_closes_upstream(fresh_simulator):
    client = upstream_client(route(fresh_simulator.openai_base, read=0.3))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await client.post(fresh_simulator.openai_base + "/chat/completions", content=chat("sim-echo?hang=1"))
    assert time.monotonic() - started < 2
    await fresh_simulator.await_requests(lambda rs: rs and rs[-1]["disconnected"], timeout=2.0)


async def test_dropped_stream_is_remote_protocol_error(fresh_simulator):
    client = upstream_client(route(fresh_simulator.openai_base))
    request = client.build_request(
        "POST",
        fresh_simulator.openai_base + "/chat/completions",
        content=chat("sim-echo?drop_after=2&tokens=10", stream=True),
    )
    response = await client.send(request, stream=True)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        async for _ in response.aiter_bytes():
            pass
    await response.aclose()


async def test_closing_mid_stream_drops_the_upstream_connection(fresh_simulator):
    client = upstream_client(route(fresh_simulator.openai_base))
    request = client.build_request(
        "POST",
        fresh_simulator.openai_base + "/chat/completions",
        content=chat("sim-echo?tokens=100&interval_ms=20", stream=True),
    )
    response = await client.send(request, stream=True)
    async for _ in response.aiter_bytes():
        break
    closed = time.time()
    await response.aclose()
    records = await fresh_simulator.await_requests(lambda rs: rs and rs[-1]["disconnected"], timeout=2.0)
    assert records[-1]["disconnected_at"] - closed < 1.0
