"""No admitted request leaves the books: clients that leave before the body is read, a storm of
connection resets, and a gateway process killed mid-stream (its "started" marker becomes a `lost`
record). Real gateway processes, real Redis, the simulator over loopback."""

import asyncio
import os
import signal
import socket
import struct
import time

import httpx
import orjson
import pytest
from django.test import override_settings

from accounts.models import UsageRecord
from accounts.usage import usage_flush, usage_reconcile
from providers.upstream import upstream_clients_close
from streaming.relay import background_drain
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import chat_scope, leases_held, markers_held, usage_events, wait_usage
from tests.support.waiting import eventually

MESSAGES = [{"role": "user", "content": "hello"}]


_leases = leases_held
_markers = markers_held


def _raw_post(url: str, key: str, body: dict) -> bytes:
    payload = orjson.dumps(body)
    host = url.removeprefix("http://")
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _reset_after(url: str, request: bytes, delay: float) -> None:
    """Send the request, then reset the connection (RST, not FIN) after `delay` seconds."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(request)
    time.sleep(delay)
    sock.close()


@pytest.mark.django_db(transaction=True)
def test_connection_resets_right_after_sending_free_every_slot_and_are_all_recorded(gateway, fresh_simulator):
    """40 streamed requests whose clients reset the connection 0-39 ms after sending, on a tier with 5
    concurrency slots: every slot comes back at once (not after the lease expiry), every admitted request
    has a usage record, and the key is usable again right away."""
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-slow", [(sim, "sim-mini?tokens=40&interval_ms=50", 0)])
    key = key_create("five-slots", max_concurrent=5)
    for delay_ms in range(40):
        messages = [{"role": "user", "content": "w " * (delay_ms + 1)}]
        request = _raw_post(gateway.url, key, {"model": "sim-slow", "messages": messages, "stream": True})
        _reset_after(gateway.url, request, delay_ms / 1000)

    eventually(lambda: _leases() == 0 and _markers() == 0, timeout=5, what="every lease and marker cleared")
    events = usage_events()
    ids = [event["request_id"] for event in events]
    assert len(ids) == len(set(ids))
    # Each request that reached the provider was admitted, and each admitted one is on the books.
    assert len(events) >= len(fresh_simulator.requests(model="sim-mini?tokens=40&interval_ms=50"))
    assert {event["status_code"] for event in events} <= {499}, [(e["status_code"], e["duration_ms"]) for e in events]

    async def five_streams():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "sim-slow", "messages": MESSAGES, "stream": True}

            async def one():
                headers = {"Authorization": f"Bearer {key}"}
                async with client.stream("POST", gateway.openai_base + "/chat/completions", json=body,
                                         headers=headers) as response:  # fmt: skip
                    text = (await response.aread()).decode()
                    return response.status_code, text

            return await asyncio.gather(*(one() for _ in range(5)))

    results = asyncio.run(five_streams())
    assert [status for status, _ in results] == [200] * 5
    assert all(text.rstrip().endswith("data: [DONE]") for _, text in results)


@pytest.mark.django_db(transaction=True)
def test_a_body_never_read_still_closes_upstream_frees_the_lease_and_is_recorded(redis_server, fresh_simulator):
    """The client leaves after the response object exists but before its body is iterated (here: while
    the response headers are being sent). In process, through the real ASGI application."""
    from aigateway.asgi import application

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-slow", [(sim, "sim-mini?tokens=50&interval_ms=100", 0)])
    key = key_create("slots", max_concurrent=2)
    body = orjson.dumps({"model": "sim-slow", "messages": MESSAGES, "stream": True})
    scope = chat_scope(key, body)

    async def run() -> list[dict]:
        headers_sent = asyncio.Event()
        gone = asyncio.Event()
        messages: list[dict] = []
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)
            if message["type"] == "http.response.start":
                headers_sent.set()
                await asyncio.Event().wait()  # the client never reads on

        app = asyncio.create_task(application(scope, receive, send))
        await asyncio.wait_for(headers_sent.wait(), 10)
        gone.set()
        await asyncio.wait_for(app, 10)
        await asyncio.sleep(0)  # the cleanup is spawned when the request's task ends
        await background_drain()
        await upstream_clients_close()
        return messages

    with override_settings(DEBUG=False):
        messages = asyncio.run(run())
    assert messages[0]["status"] == 200
    assert not [m for m in messages if m["type"] == "http.response.body" and m.get("body")]
    events = wait_usage(lambda events: len(events) == 1, timeout=5)
    assert events[0]["status_code"] == 499 and events[0]["error_type"] == "client_disconnected"
    assert _leases() == 0 and _markers() == 0
    # The upstream stream was closed, not left generating for 5 seconds.
    assert len(fresh_simulator.requests(model="sim-mini?tokens=50&interval_ms=100")) == 1


@pytest.mark.django_db(transaction=True)
def test_a_gateway_killed_mid_stream_leaves_a_lost_record(gateway_factory, fresh_simulator):
    gateway = gateway_factory(GATEWAY_USAGE_LOST_AFTER_SECONDS="1")
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-slow", [(sim, "sim-mini?tokens=100&interval_ms=100", 0)])
    key = key_create("free")
    body = {"model": "sim-slow", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.openai_base + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=10) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        next(response.iter_bytes())
        assert _markers() == 1
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait(10)
    assert usage_events() == []
    with override_settings(GATEWAY_USAGE_LOST_AFTER_SECONDS=1):
        assert usage_reconcile() == 0  # not yet past its deadline
        time.sleep(1.2)
        assert usage_reconcile() == 1
        assert usage_reconcile() == 0
    usage_flush(batch_size=100)
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.status_code, record.error_type, record.tokens_estimated) == (500, "lost", True)
    assert record.model == "sim-slow" and record.prompt_tokens > 0
    assert _markers() == 0


@pytest.mark.django_db(transaction=True)
def test_finished_requests_leave_no_marker_and_a_late_reconcile_finds_nothing(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo", 0)])
    limited = key_create("limited", rpm=1000)
    unlimited = key_create("unlimited")
    for key in (limited, unlimited):
        for stream in (False, True):
            body = {"model": "sim-fast", "messages": MESSAGES, "stream": stream}
            response = httpx.post(gateway.openai_base + "/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip
            assert response.status_code == 200
    wait_usage(lambda events: len(events) == 4)
    assert _markers() == 0
    with override_settings(GATEWAY_USAGE_LOST_AFTER_SECONDS=0):
        assert usage_reconcile(now=time.time() + 3600) == 0


@pytest.mark.django_db(transaction=True)
def test_the_flush_task_reconciles_lost_requests_in_a_real_worker(gateway_factory, fresh_simulator, celery_worker):
    gateway = gateway_factory(GATEWAY_USAGE_LOST_AFTER_SECONDS="1")
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-slow", [(sim, "sim-mini?tokens=100&interval_ms=100", 0)])
    key = key_create("free", max_concurrent=3)
    body = {"model": "sim-slow", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.openai_base + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=10) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        next(response.iter_bytes())
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait(10)
    celery_worker(flush_seconds=0.5, extra_env={"GATEWAY_USAGE_LOST_AFTER_SECONDS": "1"})
    eventually(lambda: UsageRecord.objects.filter(request_id=request_id).exists(), timeout=15,
               what="the lost request on the books")  # fmt: skip
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.error_type == "lost" and record.status_code == 500
    assert UsageRecord.objects.count() == 1
