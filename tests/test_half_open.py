"""Half-open client connections are timed out by the production server (uvicorn with aigateway.server's
protocol): an incomplete request line or header block is closed after GATEWAY_HEADER_TIMEOUT_SECONDS, a
body that never completes gets a 408 in the client's dialect after GATEWAY_BODY_TIMEOUT_SECONDS, and a
normal request is served all the while."""

import asyncio
import time

import httpx
import orjson
import pytest

pytestmark = pytest.mark.django_db(transaction=True)

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
MARGIN = 3.0
PER_KIND = 20

_CHAT_HEAD = (
    "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n"
    "Authorization: Bearer sk-gw-half-open\r\n"
)
KINDS = {
    "nothing sent": lambda index: b"",
    "partial request line": lambda index: b"POST /v1/chat/compl",
    "headers incomplete": lambda index: _CHAT_HEAD.format(path="/v1/chat/completions").encode(),
    "headers only": lambda index: (_CHAT_HEAD.format(path="/v1/chat/completions") + "\r\n").encode(),
    "short body": lambda index: (
        _CHAT_HEAD.format(path="/v1/messages" if index % 2 else "/v1/chat/completions") + '\r\n{"model": "x",'
    ).encode(),
}
HEADER_KINDS = ("nothing sent", "partial request line", "headers incomplete")


async def _half_open(port: int, kind: str, index: int) -> tuple[str, int, float, bytes]:
    """Open a connection, send the partial request, and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    payload = KINDS[kind](index)
    if payload:
        writer.write(payload)
        await writer.drain()
    try:
        received = await asyncio.wait_for(reader.read(-1), timeout=BODY_TIMEOUT + 30)
    finally:
        writer.close()
    return kind, index, time.monotonic() - started, received


def test_half_open_connections_are_closed_in_time_and_normal_requests_go_on(gateway_factory):
    gateway = gateway_factory(
        GATEWAY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT), GATEWAY_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT)
    )
    port = int(gateway.url.rsplit(":", 1)[1])

    async def scenario():
        tasks = [asyncio.create_task(_half_open(port, kind, index)) for kind in KINDS for index in range(PER_KIND)]
        # Served while all the half-open connections are held.
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=5) as client:
            normal_started = time.monotonic()
            health = await client.get(gateway.url + "/health")
            normal_seconds = time.monotonic() - normal_started
            unknown = await client.post(gateway.url + "/v1/chat/completions", json={"model": "m"})
        results = await asyncio.gather(*tasks)
        return health, normal_seconds, unknown, results

    health, normal_seconds, unknown, results = asyncio.run(scenario())
    assert health.status_code == 200 and normal_seconds < 2.0
    assert unknown.status_code == 401, unknown.text

    assert len(results) == PER_KIND * len(KINDS)
    for kind, index, seconds, received in results:
        timeout = HEADER_TIMEOUT if kind in HEADER_KINDS else BODY_TIMEOUT
        # Not before its deadline (the timer is what closed it), and not long after.
        assert timeout - 0.3 <= seconds <= timeout + MARGIN, (kind, index, seconds)
        status_line = received.split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 408 Request Timeout", (kind, received[:200])
        if kind in HEADER_KINDS:
            continue
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower()
        error = orjson.loads(body)
        if kind == "short body" and index % 2:
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
            assert "not received in time" in error["error"]["message"]
        else:
            assert error["error"]["code"] == "request_timeout", error
    assert "Traceback" not in gateway.log()


def test_a_slow_but_steady_body_is_read_and_a_long_stream_is_not_cut(gateway_factory, fresh_simulator):
    """The body timer bounds only the body; a body sent in pieces within it is served, and a stream longer
    than both timeouts runs to its end."""
    from tests.support.data import key_create, model_create, provider_create

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-slow", [(sim, "sim-echo?tokens=30&interval_ms=150", 0)])
    key = key_create("half-open")
    gateway = gateway_factory(
        GATEWAY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT), GATEWAY_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT)
    )
    port = int(gateway.url.rsplit(":", 1)[1])
    body = orjson.dumps({"model": "sim-slow", "stream": True, "messages": [{"role": "user", "content": "x" * 100}]})

    async def scenario():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        for start in range(0, len(body), 40):
            writer.write(body[start : start + 40])
            await writer.drain()
            await asyncio.sleep(0.5)
        started = time.monotonic()
        received = await asyncio.wait_for(reader.read(-1), timeout=30)
        writer.close()
        return received, time.monotonic() - started

    received, seconds = asyncio.run(scenario())
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert b"data: [DONE]" in received
    # 30 tokens at 150 ms: longer than either timeout.
    assert seconds > BODY_TIMEOUT + 0.5
