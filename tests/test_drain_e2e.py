"""A rolling restart that cuts nothing: SIGTERM to a gateway (the production command, `manage.py run_gateway`)
behind a load balancer that finds backends by polling `/ready`. The gateway fails readiness at once and keeps
serving through GATEWAY_DRAIN_SECONDS (the balancer has not noticed yet), then refuses new connections, and the
stream that was running when the signal came completes event for event and is recorded once."""

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from accounts.models import UsageRecord
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import ROOT, gateway_env
from tests.support.ports import free_port, stop_process, wait_http
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

DRAIN = 3.0
GRACE = 30.0
# Polled every second: a draining backend is taken out at the first poll that sees its 503.
POLL_SECONDS = 1.0
LONG_TOKENS = 60  # one token every 100 ms: the stream outlives the drain by about two seconds


class ReadinessBalancer:
    """A load balancer as the test models one: each new request goes to the first backend whose last
    readiness poll answered 200. Between polls it still believes what it saw last, so it goes on sending to a
    backend that has just started draining until its next poll."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.ready = dict.fromkeys(backends, False)
        self.polls = 0
        self._task: asyncio.Task | None = None

    async def poll(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            for backend in self.backends:
                try:
                    self.ready[backend] = (await client.get(backend + "/ready")).status_code == 200
                except httpx.TransportError:
                    self.ready[backend] = False
        self.polls += 1

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.poll()

    async def __aenter__(self) -> "ReadinessBalancer":
        await self.poll()
        self._task = asyncio.create_task(self._poll_forever())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()

    def pick(self) -> str:
        for backend in self.backends:
            if self.ready[backend]:
                return backend
        raise AssertionError(f"no backend ready: {self.ready}")


@dataclass
class Stream:
    status: int = 0
    request_id: str = ""
    events: list[bytes] = field(default_factory=list)
    error: str = ""
    first_event: asyncio.Event = field(default_factory=asyncio.Event)

    def text(self) -> str:
        parts = []
        for data in self.events:
            if data.startswith(b"{"):
                for choice in orjson.loads(data).get("choices", ()):
                    parts.append(choice.get("delta", {}).get("content") or "")
        return "".join(parts)


async def _stream(base: str, key: str, model: str, read: Stream | None = None) -> Stream:
    read = read or Stream()
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream(
                "POST", base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                read.status = response.status_code
                read.request_id = response.headers.get("x-request-id", "")
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        read.events.append(line[6:].encode())
                        read.first_event.set()
    except httpx.HTTPError as exc:
        read.error = f"{type(exc).__name__}: {exc}"
    read.first_event.set()
    return read


def _start_run_gateway(tmp_path, redis_url: str, **env) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"gateway-{port}.log"
    command = [sys.executable, "manage.py", "run_gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=gateway_env(redis_url, **env), stdout=log, stderr=subprocess.STDOUT
        )
    wait_http(base + "/health", timeout=30, process=process)
    return process, base, log_path


def test_sigterm_fails_readiness_serves_through_the_drain_then_refuses_and_finishes_streams(
    gateway, fresh_simulator, celery_worker, redis_server, tmp_path
):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-long", [(sim, f"sim-echo?tokens={LONG_TOKENS}&interval_ms=100", 0)])
    model_create("sim-short", [(sim, "sim-echo?tokens=8&interval_ms=50", 0)])
    key = key_create("drain", max_concurrent=50, tpm=10_000_000)
    celery_worker(flush_seconds=0.3)

    draining, base, log_path = _start_run_gateway(
        tmp_path, redis_server, GATEWAY_DRAIN_SECONDS=str(DRAIN), GATEWAY_SHUTDOWN_GRACE_SECONDS=str(GRACE)
    )
    try:
        outcome = asyncio.run(_rolling_restart(draining, base, gateway.url, key))
        log_text = log_path.read_text(errors="replace")
    finally:
        stop_process(draining)

    (long_read, reference, during_drain, after_noticed, ready_after, health_after, refused_after, exited_after) = (
        outcome
    )
    # Readiness failed at once, while liveness still answered.
    assert ready_after is not None and ready_after < 0.5, ready_after
    assert health_after is not None and health_after < 0.5, health_after

    # The request the balancer sent during the drain (it had not polled since the signal) was served in full.
    assert during_drain.status == 200 and not during_drain.error, during_drain
    assert during_drain.events[-1] == b"[DONE]"
    # Then the balancer saw the 503 and sent the next request to the other gateway.
    assert after_noticed.status == 200 and after_noticed.events[-1] == b"[DONE]", after_noticed

    # The listener closed when the drain was over, not before and not long after.
    assert refused_after is not None and DRAIN - 0.3 <= refused_after <= DRAIN + 1.5, refused_after

    # The stream in flight ran on past the drain to its end: every event of the same answer served undisturbed.
    assert long_read.status == 200 and not long_read.error, long_read
    assert long_read.events[-1] == b"[DONE]" and b"gateway_shutdown" not in b"".join(long_read.events)
    assert long_read.text() == reference.text() and len(long_read.text()) > 0
    assert len(long_read.events) == len(reference.events), (len(long_read.events), len(reference.events))

    # The process stopped on its own once that stream was done, well inside the grace period.
    assert exited_after is not None and exited_after < DRAIN + GRACE / 3, exited_after
    assert draining.returncode in (-signal.SIGTERM, 0), draining.returncode
    assert "not ready; still serving for 3s" in log_text and "Traceback" not in log_text, log_text[-3000:]

    # Each call recorded once, the long one with every token it streamed.
    ids = [long_read.request_id, during_drain.request_id, after_noticed.request_id]
    eventually(lambda: UsageRecord.objects.filter(request_id__in=ids).count() == 3, timeout=30, what="usage records")
    time.sleep(1.0)  # a second flush would have written any duplicate by now
    records = {r.request_id: r for r in UsageRecord.objects.filter(request_id__in=[*ids, reference.request_id])}
    assert UsageRecord.objects.filter(request_id=long_read.request_id).count() == 1
    long_record = records[long_read.request_id]
    assert (long_record.status_code, long_record.error_type) == (200, "")
    assert long_record.completion_tokens == records[reference.request_id].completion_tokens == LONG_TOKENS
    assert records[during_drain.request_id].status_code == 200
    print(
        f"drain: /ready 503 after {ready_after:.2f}s (/health 200), request during the drain served, "
        f"listener refused after {refused_after:.2f}s (drain {DRAIN:g}s), the {LONG_TOKENS}-token stream completed, "
        f"process exited after {exited_after:.2f}s"
    )


async def _rolling_restart(process: subprocess.Popen, draining: str, other: str, key: str):
    # The same answer served by a gateway that is not stopping: what the stream must match.
    reference = await _stream(other, key, "sim-long")
    async with ReadinessBalancer([draining, other]) as balancer:
        assert balancer.pick() == draining
        long_read = Stream()
        long_task = asyncio.create_task(_stream(balancer.pick(), key, "sim-long", long_read))
        await asyncio.wait_for(long_read.first_event.wait(), timeout=10)
        polls_before = balancer.polls
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        ready_after = health_after = None
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() - signalled < 1.0 and (ready_after is None or health_after is None):
                if ready_after is None:
                    answer = await client.get(draining + "/ready")
                    if answer.status_code == 503:
                        assert answer.json()["checks"]["process"] == "draining", answer.text
                        ready_after = time.monotonic() - signalled
                if health_after is None and (await client.get(draining + "/health")).status_code == 200:
                    health_after = time.monotonic() - signalled
                await asyncio.sleep(0.02)

        # The balancer has not polled since the signal: it still sends new requests to the draining gateway.
        if balancer.polls == polls_before:
            target = balancer.pick()
        else:  # a poll raced the signal; the request goes to the draining gateway as an unaware balancer's would
            target = draining
        assert target == draining
        during_drain = await _stream(target, key, "sim-short")

        await asyncio.wait_for(_until(lambda: not balancer.ready[draining]), timeout=POLL_SECONDS * 3)
        after_noticed = await _stream(balancer.pick(), key, "sim-short")

        refused_after = None
        while time.monotonic() - signalled < DRAIN + 5:
            try:
                async with httpx.AsyncClient(timeout=1) as fresh:
                    await fresh.get(draining + "/health")
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                # Refused, or (a connection that raced the listener's close) closed before any answer: either
                # way this gateway takes no new connection.
                refused_after = time.monotonic() - signalled
                break
            await asyncio.sleep(0.05)

        await long_task
        exited_after = None
        while time.monotonic() - signalled < DRAIN + GRACE:
            if process.poll() is not None:
                exited_after = time.monotonic() - signalled
                break
            await asyncio.sleep(0.05)
    return long_read, reference, during_drain, after_noticed, ready_after, health_after, refused_after, exited_after


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.05)
