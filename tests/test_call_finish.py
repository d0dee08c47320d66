"""Every admitted call finishes exactly once, on every path: a client that closes the moment it has read
the final event, a long call outliving the lease and marker timers, a key revoked mid-stream. Real gateway
processes, real Redis, a real Celery worker writing the records, the simulator over loopback; the usage
records and the Redis leases are checked, not only what the client saw."""

import asyncio
import socket
import struct
import time

import httpx
import orjson
import pytest

from accounts.models import ApiKey, UsageRecord
from accounts.usage import usage_reconcile
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import gateway_start
from tests.support.usage import chat_scope, leases_held, markers_held
from tests.support.waiting import eventually

MESSAGES = [{"role": "user", "content": "hello"}]


def _request(url: str, path: str, key: str, body: dict) -> bytes:
    payload = orjson.dumps(body)
    host = url.removeprefix("http://")
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nx-api-key: {key}\r\n"
        f"anthropic-version: 2023-06-01\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


async def _close_at_final_event(url: str, request: bytes, final: bytes, *, reset: bool) -> str:
    """Send `request`, read until the final event `final` arrives, close at once (RST or FIN); the
    request id the gateway answered with."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    if reset:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.write(request)
    received = b""
    while final not in received:
        chunk = await reader.read(65536)
        assert chunk, f"stream ended before {final!r}: {received[-300:]!r}"
        received += chunk
    writer.close()
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200"), head
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "x-request-id":
            return value.strip()
    raise AssertionError(f"no x-request-id in {head!r}")


async def _many(count: int, concurrency: int, make):
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int):
        async with slots:
            return await make(index)

    return await asyncio.gather(*(one(index) for index in range(count)))


def _records(request_ids) -> dict[str, UsageRecord]:
    return {record.request_id: record for record in UsageRecord.objects.filter(request_id__in=list(request_ids))}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path, final, reset",
    [
        ("/v1/chat/completions", b"data: [DONE]", True),
        ("/v1/chat/completions", b"data: [DONE]", False),
        ("/v1/messages", b"event: message_stop", True),
        ("/v1/messages", b"event: message_stop", False),
    ],
    ids=["chat-reset", "chat-close", "messages-reset", "messages-close"],
)
def test_clients_closing_at_the_final_event_are_all_recorded_and_free_their_slots(
    gateway, fresh_simulator, celery_worker, path, final, reset
):
    """120 streams whose client closes (reset or graceful) as soon as it has read the final event: each
    one is a usage record with its 12 served tokens and status 200, and no lease is left behind (a slot
    comes back a moment after its client left: 4 clients at a time on a key of 8 slots never meet a 429,
    and the key can run 8 streams at once right after)."""
    worker = celery_worker(beat=True, flush_seconds=0.3)
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-final", [(sim, "sim-mini?tokens=12", 0)])
    key = key_create("final-event", max_concurrent=8, rpm=100_000)
    body = {"model": "sim-final", "messages": MESSAGES, "stream": True, "max_tokens": 50}
    request = _request(gateway.url, path, key, body)

    ids = asyncio.run(_many(120, 4, lambda _index: _close_at_final_event(gateway.url, request, final, reset=reset)))
    assert len(set(ids)) == 120
    eventually(lambda: leases_held() == 0 and markers_held() == 0, timeout=10, what="every lease and marker cleared")
    eventually(lambda: len(_records(ids)) == 120, timeout=20, what="120 usage records written by the worker")
    records = _records(ids)
    assert {(r.status_code, r.error_type) for r in records.values()} == {(200, "")}
    assert {r.completion_tokens for r in records.values()} == {12}
    worker.stop()

    async def eight_at_once():
        async with httpx.AsyncClient(timeout=30) as client:
            chat = {**body, "model": "sim-final"}
            headers = {"Authorization": f"Bearer {key}"}
            return await asyncio.gather(
                *(client.post(gateway.openai_base + "/chat/completions", json=chat, headers=headers) for _ in range(8))
            )

    assert [response.status_code for response in asyncio.run(eight_at_once())] == [200] * 8


@pytest.fixture
def short_timers_gateway(redis_server, tmp_path):
    """A gateway whose lease TTL and lost-after time (1.5 s) stand in for calls far longer than them."""
    handle = gateway_start(
        redis_server, tmp_path, GATEWAY_LEASE_TTL_SECONDS="1.5", GATEWAY_USAGE_LOST_AFTER_SECONDS="1.5"
    )
    yield handle
    handle.stop()


@pytest.mark.django_db(transaction=True)
def test_long_calls_keep_their_lease_and_marker_and_are_booked_as_served(short_timers_gateway, fresh_simulator):
    """Calls that run 4 s on a gateway whose leases and markers expire after 1.5 s unless renewed: a
    non-streamed call, a streamed one and a compare stream whose provider stays silent for 4 s before its
    first token. While they run the key's 3 slots stay taken (a fourth call gets 429) and the reconciler
    books none of them as lost; each is recorded as served, with its tokens."""
    gateway = short_timers_gateway
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-long", [(sim, "sim-mini?tokens=25&interval_ms=160", 0)])
    model_create("sim-silent", [(sim, "sim-mini?tokens=25&ttft_ms=4000", 0)])
    key = key_create("three-slots", max_concurrent=3, rpm=100_000)
    headers = {"Authorization": f"Bearer {key}"}

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:

            async def plain():
                body = {"model": "sim-long", "messages": MESSAGES}
                response = await client.post(gateway.openai_base + "/chat/completions", json=body, headers=headers)
                return response.status_code, response.headers["x-request-id"], response.json()["usage"]

            async def streamed():
                body = {"model": "sim-long", "messages": MESSAGES, "stream": True}
                url = gateway.openai_base + "/chat/completions"
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    text = (await response.aread()).decode()
                    return response.status_code, response.headers["x-request-id"], text

            async def compared():
                body = {"models": ["sim-silent"], "messages": MESSAGES}
                async with client.stream("POST", gateway.openai_base + "/compare", json=body, headers=headers) as r:
                    events = [
                        orjson.loads(line[6:])
                        for line in (await r.aread()).decode().splitlines()
                        if line.startswith("data: {")
                    ]
                    return r.status_code, events

            async def meanwhile():
                # Past the 1.5 s expiry, several times over: the slots are still held, nothing is lost.
                await asyncio.sleep(2.5)
                reconciled = await asyncio.to_thread(usage_reconcile)
                third = await client.post(
                    gateway.openai_base + "/chat/completions", json={"model": "sim-long", "messages": MESSAGES},
                    headers=headers,
                )  # fmt: skip
                return reconciled, third.status_code, await asyncio.to_thread(leases_held)

            return await asyncio.gather(plain(), streamed(), compared(), meanwhile())

    (plain_status, plain_id, plain_usage), (stream_status, stream_id, text), (cmp_status, events), during = asyncio.run(
        run()
    )
    reconciled, fourth_status, leases_during = during
    assert (plain_status, stream_status, cmp_status) == (200, 200, 200)
    assert plain_usage["completion_tokens"] == 25
    assert text.rstrip().endswith("data: [DONE]")
    assert [e["type"] for e in events if e["type"] in ("done", "error")] == ["done"], events
    assert reconciled == 0, "a running call was booked as lost"
    assert leases_during == 3
    assert fourth_status == 429
    compare_id = next(e["request_id"] for e in events if e["type"] == "start")

    from tests.support.usage import usage_events

    def booked():
        events = {e["request_id"]: e for e in usage_events()}
        return all(request_id in events for request_id in (plain_id, stream_id, compare_id)) and events

    eventually(booked, timeout=10, what="the three calls' usage events")
    time.sleep(2)  # past another expiry: nothing more may be reconciled into a lost record
    assert usage_reconcile() == 0
    events = {e["request_id"]: e for e in usage_events()}
    for request_id in (plain_id, stream_id, compare_id):
        assert (events[request_id]["status_code"], events[request_id]["completion_tokens"]) == (200, 25)
    assert [e for e in events.values() if e["error_type"] == "lost"] == []
    eventually(lambda: leases_held() == 0 and markers_held() == 0, timeout=5, what="leases and markers cleared")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["disabled", "deleted"])
def test_a_key_revoked_mid_stream_ends_its_stream_with_an_error_event_and_is_recorded(gateway, fresh_simulator, how):
    """A 100-token stream at 100 ms a token; 1 s in, the key is disabled (or deleted) in the database. The
    gateway checks keys every GATEWAY_CONFIG_CHECK_SECONDS (0 here), so the stream ends within 1 s more
    with an error event naming why, the upstream is closed, and the call is recorded with the tokens it
    was served."""
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-revoked", [(sim, "sim-mini?tokens=100&interval_ms=100", 0)])
    key = key_create("revocable", max_concurrent=2)
    api_key = ApiKey.objects.get(name="revocable-key")

    def revoke():
        if how == "disabled":
            api_key.enabled = False
            api_key.save()
        else:
            api_key.delete()

    async def run():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "sim-revoked", "messages": MESSAGES, "stream": True}
            url = gateway.openai_base + "/chat/completions"
            async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                lines = []
                revoked_at = None
                started = time.monotonic()
                async for line in r.aiter_lines():
                    lines.append(line)
                    if revoked_at is None and time.monotonic() - started > 1.0:
                        await asyncio.to_thread(revoke)
                        revoked_at = time.monotonic()
                return r.headers["x-request-id"], lines, time.monotonic() - revoked_at

    request_id, lines, ended_after = asyncio.run(run())
    assert ended_after < 2.0, f"the stream went on {ended_after:.1f}s after the key was revoked"
    errors = [orjson.loads(line[6:]) for line in lines if line.startswith("data: {") and '"error"' in line]
    assert errors and errors[-1]["error"]["code"] == "key_revoked", lines[-5:]
    assert "disabled, deleted or expired" in errors[-1]["error"]["message"]
    from tests.support.usage import wait_usage

    events = wait_usage(lambda events: any(e["request_id"] == request_id for e in events), timeout=5)
    event = next(e for e in events if e["request_id"] == request_id)
    assert (event["status_code"], event["error_type"]) == (401, "key_revoked")
    assert 5 <= event["completion_tokens"] < 60
    eventually(lambda: leases_held() == 0, timeout=5, what="the lease released")


@pytest.mark.django_db(transaction=True)
def test_a_websocket_cancel_storm_books_every_model_and_frees_every_slot(gateway, fresh_simulator):
    """150 runs of two models over one socket, a third cancelled the moment they were sent (some before
    their admission was answered, some just as it was), a third as their first model's last token arrives
    (as its stream is ending), a third left to complete: every model the run's
    `complete` frame names is one usage record (none refused: no slot is left taken), nothing is left as a
    lease or a marker."""
    from websockets.sync.client import connect as ws_connect

    from tests.support.usage import usage_events

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-storm-a", [(sim, "sim-mini?tokens=20&interval_ms=5", 0)])
    model_create("sim-storm-b", [(sim, "sim-mini?tokens=20&interval_ms=5", 0)])
    key = key_create("storm", max_concurrent=50, rpm=100_000)
    results: dict[str, dict] = {}
    url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket_:
        assert orjson.loads(socket_.recv(timeout=10))["type"] == "ready"
        for index in range(150):
            chat = {"type": "chat", "models": ["sim-storm-a", "sim-storm-b"], "messages": MESSAGES}
            socket_.send(orjson.dumps(chat).decode())
            if index % 3 == 1:
                socket_.send('{"type": "cancel"}')
            chunks = 0
            while True:
                frame = orjson.loads(socket_.recv(timeout=10))
                chunks += frame["type"] == "chunk"
                if index % 3 == 2 and chunks == 20:
                    # One model's last token: cancel as its stream is ending.
                    socket_.send('{"type": "cancel"}')
                if frame["type"] == "complete":
                    for result in frame["results"].values():
                        # A model cancelled before its task ever ran has no call, hence no request id.
                        if "request_id" in result:
                            results[result["request_id"]] = result
                    break
                if frame["type"] == "error" and "model" not in frame:
                    # The cancel came after the run had completed: nothing to cancel.
                    assert frame["code"] == "no_run", frame
    assert len(results) > 250
    assert {result["status"] for result in results.values()} <= {"done", "cancelled"}, results
    assert sum(result["status"] == "cancelled" for result in results.values()) > 30
    eventually(lambda: leases_held() == 0 and markers_held() == 0, timeout=10, what="every lease and marker cleared")

    def all_booked():
        return sorted(e["request_id"] for e in usage_events()) == sorted(results)

    eventually(all_booked, timeout=10, what="one usage record per model of every run")
    events = {e["request_id"]: e for e in usage_events()}
    for request_id, result in results.items():
        if result["status"] == "done":
            assert (events[request_id]["status_code"], events[request_id]["completion_tokens"]) == (200, 20)
        else:
            assert events[request_id]["status_code"] == 499


@pytest.mark.django_db(transaction=True)
def test_websocket_clients_leaving_as_a_stream_ends_are_all_booked(gateway, fresh_simulator):
    """60 sockets, each running two models and closing the moment one model's last token arrives (the
    other model's stream ending or just ended): each started model is one usage record, and no lease or
    marker is left behind."""
    from websockets.sync.client import connect as ws_connect

    from tests.support.usage import usage_events

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-leave-a", [(sim, "sim-mini?tokens=20&interval_ms=2", 0)])
    model_create("sim-leave-b", [(sim, "sim-mini?tokens=20&interval_ms=2", 0)])
    key = key_create("leavers", max_concurrent=50, rpm=100_000)
    started: list[str] = []
    url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    for _ in range(60):
        with ws_connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket_:
            assert orjson.loads(socket_.recv(timeout=10))["type"] == "ready"
            chat = {"type": "chat", "models": ["sim-leave-a", "sim-leave-b"], "messages": MESSAGES}
            socket_.send(orjson.dumps(chat).decode())
            chunks = 0
            while chunks < 20:
                frame = orjson.loads(socket_.recv(timeout=10))
                chunks += frame["type"] == "chunk"
                if frame["type"] == "start":
                    started.append(frame["request_id"])
    eventually(lambda: leases_held() == 0 and markers_held() == 0, timeout=10, what="every lease and marker cleared")

    def all_booked():
        return set(started) <= {e["request_id"] for e in usage_events()}

    eventually(all_booked, timeout=10, what="one usage record per started model")


@pytest.mark.django_db(transaction=True)
def test_the_api_handler_closes_the_relays_own_stream_when_the_client_leaves(redis_server, fresh_simulator):
    """In process, through the real ASGI application: the client leaves after the first streamed chunk.
    By the time the application returns, the relay's stream has been closed and the call has ended (its
    usage event is in Redis, its lease is free): the handler closed the relay's own iterator, not a wrapper
    around it that would leave the relay's cleanup to whenever the generator is collected."""
    from aigateway.asgi import application
    from providers.upstream import upstream_clients_close
    from streaming.relay import background_drain
    from tests.support.usage import usage_events

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-leave", [(sim, "sim-mini?tokens=50&interval_ms=50", 0)])
    key = key_create("leaving", max_concurrent=2)
    body = orjson.dumps({"model": "sim-leave", "messages": MESSAGES, "stream": True})
    scope = chat_scope(key, body)

    async def run() -> tuple[list[dict], int]:
        first_chunk = asyncio.Event()
        gone = asyncio.Event()
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and message.get("body"):
                first_chunk.set()
                await asyncio.sleep(0.5)  # the client is gone by the time this write completes

        app = asyncio.create_task(application(scope, receive, send))
        await asyncio.wait_for(first_chunk.wait(), 10)
        gone.set()
        await asyncio.wait_for(app, 10)
        # Nothing awaited in between: what the books and Redis hold now is what the handler left.
        seen = await asyncio.to_thread(usage_events)
        leases = await asyncio.to_thread(leases_held)
        await background_drain()
        await upstream_clients_close()
        return seen, leases

    events, leases = asyncio.run(run())
    assert [(e["status_code"], e["error_type"]) for e in events] == [(499, "client_disconnected")]
    assert events[0]["completion_tokens"] < 50
    assert leases == 0


@pytest.mark.django_db(transaction=True)
def test_a_key_revoked_mid_compare_ends_every_model_with_an_error_event(gateway, fresh_simulator):
    """The same through /v1/compare: two 100-token models at 100 ms a token; the key is disabled 1 s in.
    Each model ends within 1 s more with a `key_revoked` error event, and each is recorded as such."""
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-rev-a", [(sim, "sim-mini?tokens=100&interval_ms=100", 0)])
    model_create("sim-rev-b", [(sim, "sim-mini?tokens=100&interval_ms=100", 0)])
    key = key_create("revocable-compare", max_concurrent=4)
    api_key = ApiKey.objects.get(name="revocable-compare-key")

    def revoke():
        api_key.enabled = False
        api_key.save()

    async def run():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"models": ["sim-rev-a", "sim-rev-b"], "messages": MESSAGES}
            url = gateway.openai_base + "/compare"
            async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                events = []
                revoked_at = None
                started = time.monotonic()
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        events.append(orjson.loads(line[6:]))
                    if revoked_at is None and time.monotonic() - started > 1.0:
                        await asyncio.to_thread(revoke)
                        revoked_at = time.monotonic()
                return events, time.monotonic() - revoked_at

    events, ended_after = asyncio.run(run())
    assert ended_after < 2.0, f"the run went on {ended_after:.1f}s after the key was revoked"
    errors = {e["model"]: e for e in events if e["type"] == "error"}
    assert set(errors) == {"sim-rev-a", "sim-rev-b"}, events[-4:]
    assert {e["code"] for e in errors.values()} == {"key_revoked"}
    started_ids = {e["request_id"] for e in events if e["type"] == "start"}
    from tests.support.usage import wait_usage

    booked = wait_usage(lambda events: started_ids <= {e["request_id"] for e in events}, timeout=5)
    assert {(e["status_code"], e["error_type"]) for e in booked if e["request_id"] in started_ids} == {
        (401, "key_revoked")
    }
    eventually(lambda: leases_held() == 0, timeout=5, what="the leases released")
