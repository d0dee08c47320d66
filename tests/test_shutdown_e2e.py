"""SIGTERM to a gateway (the production command, `manage.py run_gateway`) with streams in flight: it
refuses new connections at once, streams that finish within GATEWAY_SHUTDOWN_GRACE_SECONDS complete
normally, longer ones end with a gateway_shutdown error event and a clean end, the process exits, and
every call is recorded with its limits lease released."""

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from accounts.models import ApiKey, UsageRecord
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import ROOT, gateway_env
from tests.support.ports import free_port, stop_process, wait_http

pytestmark = pytest.mark.django_db(transaction=True)

GRACE = 2.0


@dataclass
class StreamRead:
    dialect: str
    model: str
    status: int = 0
    request_id: str = ""
    body: bytes = b""
    first_chunk_at: float | None = None
    ended_at: float | None = None
    error: str = ""
    chunks: list[bytes] = field(default_factory=list)


async def _stream(client: httpx.AsyncClient, base: str, key: str, dialect: str, model: str, started: asyncio.Event):
    read = StreamRead(dialect=dialect, model=model)
    messages = [{"role": "user", "content": "tell me"}]
    if dialect == "openai":
        path, headers = "/v1/chat/completions", {"Authorization": f"Bearer {key}"}
        body = {"model": model, "stream": True, "messages": messages}
    else:
        path, headers = "/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}
        body = {"model": model, "stream": True, "max_tokens": 500, "messages": messages}
    try:
        async with client.stream("POST", base + path, json=body, headers=headers) as response:
            read.status = response.status_code
            read.request_id = response.headers.get("x-request-id", "")
            async for chunk in response.aiter_raw():
                if read.first_chunk_at is None:
                    read.first_chunk_at = time.monotonic()
                    started.set()
                read.chunks.append(chunk)
    except httpx.HTTPError as exc:
        read.error = f"{type(exc).__name__}: {exc}"
    read.ended_at = time.monotonic()
    read.body = b"".join(read.chunks)
    return read


def _sse_data(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def _assert_completed(read: StreamRead) -> None:
    data = _sse_data(read.body)
    assert read.status == 200 and not read.error, read
    if read.dialect == "openai":
        assert data[-1] == b"[DONE]" and b"gateway_shutdown" not in read.body, read.body[-400:]
    else:
        assert orjson.loads(data[-1])["type"] == "message_stop", read.body[-400:]


def _assert_cut_with_error_event(read: StreamRead) -> None:
    data = _sse_data(read.body)
    assert read.status == 200 and not read.error, read
    if read.dialect == "openai":
        assert data[-1] == b"[DONE]", read.body[-400:]
        error = orjson.loads(data[-2])["error"]
        assert error["code"] == "gateway_shutdown", error
    else:
        assert b"event: error" in read.body
        error = orjson.loads(data[-1])
        assert error["type"] == "error" and "restarting" in error["error"]["message"], error
    # Text arrived before the cut.
    assert len(data) > 5


def test_sigterm_lets_streams_finish_within_grace_then_ends_the_rest(fresh_simulator, celery_worker, tmp_path):
    sim = provider_create("sim", fresh_simulator.openai_base)
    # ~1.2 s of tokens: started just before SIGTERM, it ends inside the 2 s grace.
    model_create("sim-short", [(sim, "sim-echo?tokens=12&interval_ms=100", 0)])
    # ~10 s of tokens: still running at the deadline.
    model_create("sim-long", [(sim, "sim-echo?tokens=100&interval_ms=100", 0)])
    # Still waiting for the provider's first byte at the deadline: a clean 503, not the server's kill.
    model_create("sim-waiting", [(sim, "sim-echo?tokens=5&ttft_ms=20000", 0)])
    key = key_create("shutdown", max_concurrent=50, tpm=10_000_000)
    key_id = ApiKey.objects.get(name="shutdown-key").pk
    celery_worker(flush_seconds=0.3)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    env = gateway_env(_redis_url(), GATEWAY_SHUTDOWN_GRACE_SECONDS=str(GRACE))
    command = [sys.executable, "manage.py", "run_gateway", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(base + "/health", timeout=30, process=process)
        result = asyncio.run(_scenario(process, base, key))
        log_text = log_path.read_text(errors="replace")
    finally:
        stop_process(process)

    reads, signalled, refused_after, exited_after = result
    waiting = [read for read in reads if read.model == "sim-waiting"]
    for read in waiting:
        assert read.status == 503, read
        assert orjson.loads(read.body)["error"]["code"] == "gateway_shutdown", read.body
        assert GRACE - 0.2 <= read.ended_at - signalled <= GRACE + 1.5, read.ended_at - signalled
    short = [read for read in reads if read.model == "sim-short"]
    long = [read for read in reads if read.model == "sim-long"]
    for read in short:
        _assert_completed(read)
        # Still running when the signal came, done before the deadline.
        assert 0.2 < read.ended_at - signalled < GRACE, read.ended_at - signalled
    for read in long:
        _assert_cut_with_error_event(read)
        # Cut at the deadline, not before it and not long after.
        assert GRACE - 0.2 <= read.ended_at - signalled <= GRACE + 1.5, read.ended_at - signalled

    # New connections were refused at once, while the streams were still running.
    assert refused_after is not None and refused_after < 1.0, refused_after
    # The process stopped on its own soon after the deadline, by the signal it was sent.
    assert exited_after is not None and exited_after < GRACE + 4.0, exited_after
    assert process.returncode in (-signal.SIGTERM, 0), process.returncode
    assert "received SIGTERM" in log_text and "Traceback" not in log_text, log_text[-3000:]

    # Every call recorded (the cut ones as 503 gateway_shutdown with the tokens they got), leases freed.
    ids = {read.request_id for read in reads}
    deadline = time.monotonic() + 30
    while UsageRecord.objects.filter(request_id__in=ids).count() < len(ids):
        assert time.monotonic() < deadline, "usage records missing"
        time.sleep(0.2)
    records = {record.request_id: record for record in UsageRecord.objects.filter(request_id__in=ids)}
    for read in short:
        assert records[read.request_id].status_code == 200
    for read in long:
        record = records[read.request_id]
        assert (record.status_code, record.error_type) == (503, "gateway_shutdown")
        assert 5 < record.completion_tokens < 100
    for read in waiting:
        record = records[read.request_id]
        assert (record.status_code, record.error_type, record.completion_tokens) == (503, "gateway_shutdown", 0)
    assert redis_sync().zcard(f"gw:rl:{{{key_id}}}:leases") == 0
    print(
        f"SIGTERM: new connections refused after {refused_after:.2f}s; {len(short)} streams completed, "
        f"{len(long)} cut at {max(r.ended_at for r in long) - signalled:.2f}s (grace {GRACE:g}s); "
        f"process exited after {exited_after:.2f}s"
    )


def _redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL


async def _scenario(process: subprocess.Popen, base: str, key: str):
    async with httpx.AsyncClient(timeout=30) as client:
        started = [asyncio.Event() for _ in range(6)]
        plan = [
            ("openai", "sim-short"),
            ("anthropic", "sim-short"),
            ("openai", "sim-long"),
            ("anthropic", "sim-long"),
            ("openai", "sim-long"),
            ("anthropic", "sim-long"),
        ]
        tasks = [
            asyncio.create_task(_stream(client, base, key, dialect, model, event))
            for (dialect, model), event in zip(plan, started, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), timeout=10)
        tasks.append(asyncio.create_task(_stream(client, base, key, "openai", "sim-waiting", asyncio.Event())))
        await asyncio.sleep(0.5)  # admitted and waiting on the provider
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        refused_after = None
        while time.monotonic() - signalled < 1.5:
            try:
                async with httpx.AsyncClient(timeout=1.0) as fresh:
                    await fresh.get(base + "/health")
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # Connected in the instant the listening socket closed: closed or reset before any byte was
                # read, as safe to retry elsewhere as a refusal; the next attempt must be refused.
                await asyncio.sleep(0.05)
                continue
            except httpx.ConnectError:
                refused_after = time.monotonic() - signalled
                break
            await asyncio.sleep(0.05)

        reads = await asyncio.gather(*tasks)
        exited_after = None
        while time.monotonic() - signalled < GRACE + 10:
            if process.poll() is not None:
                exited_after = time.monotonic() - signalled
                break
            await asyncio.sleep(0.05)
        return reads, signalled, refused_after, exited_after
