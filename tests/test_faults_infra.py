"""Infrastructure faults under live traffic, end to end: Redis restarted, the Celery worker down, the
database locked during a flush. Real gateway processes, a real worker, the simulator upstream over
loopback; every admitted request ends up as exactly one usage record."""

import asyncio
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from accounts.models import UsageRecord
from accounts.usage import USAGE_DEAD_KEY, USAGE_QUEUE_KEY, usage_flush, usage_record
from aigateway.embedded_redis import redis_binary
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.database import database_lock_wait, database_lock_writes, database_locker
from tests.support.gateway import gateway_start
from tests.support.ports import free_port, stop_process

pytestmark = pytest.mark.django_db(transaction=True)

LIMITS = {"rpm": 1_000_000, "tpm": 10**9, "max_concurrent": 1000}


class TcpRedis:
    """A private Redis on a fixed loopback TCP port, so it can be killed and started again at the same
    address. Append-only with fsync on every write: a crash loses nothing already acknowledged."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "TcpRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping()
                return self
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@dataclass
class Outcome:
    dialect: str
    started: float
    ended: float
    status: int
    request_id: str | None
    body: bytes
    content_type: str = ""


@dataclass
class Traffic:
    """Requests sent in a loop by a few concurrent clients until told to stop; every outcome kept."""

    base_url: str
    key: str
    model: str
    concurrency: int = 6
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: bool = False

    async def _one(self, client: httpx.AsyncClient, index: int) -> None:
        if index % 2:
            dialect, path = "anthropic", "/v1/messages"
            body = {"model": self.model, "max_tokens": 50, "messages": [{"role": "user", "content": f"n {index}"}]}
            headers = {"x-api-key": self.key, "anthropic-version": "2023-06-01"}
        else:
            dialect, path = "openai", "/v1/chat/completions"
            body = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": f"n {index}"}]}
            headers = {"Authorization": f"Bearer {self.key}"}
        started = time.monotonic()
        response = await client.post(self.base_url + path, json=body, headers=headers)
        self.outcomes.append(
            Outcome(
                dialect=dialect,
                started=started,
                ended=time.monotonic(),
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
                body=response.content,
                content_type=response.headers.get("content-type", ""),
            )
        )

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:

            async def loop(worker: int) -> None:
                index = worker
                while not self.stopping:
                    await self._one(client, index)
                    index += self.concurrency
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(loop(worker) for worker in range(self.concurrency)))

    def served(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == 200]


def _check_served(outcome: Outcome) -> None:
    """A 200 is a complete answer in its dialect."""
    if outcome.dialect == "openai":
        assert outcome.content_type.startswith("text/event-stream"), outcome
        assert outcome.body.rstrip().endswith(b"data: [DONE]"), outcome.body[-300:]
    else:
        assert orjson.loads(outcome.body)["type"] == "message", outcome.body[:300]


def _check_store_unavailable(outcome: Outcome) -> None:
    """A refusal while the limits store is down: a 503 in the client's own error shape, naming why."""
    assert outcome.status == 503, (outcome.status, outcome.body[:300])
    assert outcome.content_type == "application/json"
    error = orjson.loads(outcome.body)
    if outcome.dialect == "openai":
        assert error["error"]["code"] == "limits_unavailable", error
        message = error["error"]["message"]
    else:
        assert error["type"] == "error" and error["error"]["type"] == "api_error", error
        message = error["error"]["message"]
    assert "rate-limit store unavailable" in message
    assert outcome.request_id


def _wait_records(request_ids: set[str], *, timeout: float) -> float:
    started = time.monotonic()
    while True:
        stored = set(UsageRecord.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True))
        if stored == request_ids:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"{len(request_ids - stored)} of {len(request_ids)} missing"
        time.sleep(0.2)


def _assert_exactly_once(request_ids: set[str]) -> None:
    rows = list(UsageRecord.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True))
    assert len(rows) == len(request_ids) == len(set(rows))


def _routing_data(simulator, tokens: int = 5) -> str:
    sim = provider_create("sim", simulator.openai_base)
    model_create("sim-fast", [(sim, f"sim-echo?tokens={tokens}&interval_ms=10", 0)])
    return key_create("faults", **LIMITS)


def test_redis_restart_mid_traffic(tmp_path, fresh_simulator, celery_worker):
    """Redis killed for a few seconds under traffic: a gateway that fails closed answers 503 in the
    client's dialect (never a 500), one set to fail open keeps serving; both serve normally again within
    5 s of Redis' return with no restart, and every served request is recorded exactly once."""
    key = _routing_data(fresh_simulator)
    store = TcpRedis(tmp_path / "redis").start()
    gateways = []
    try:
        closed = gateway_start(store.url, tmp_path)
        gateways.append(closed)
        open_ = gateway_start(store.url, tmp_path, GATEWAY_LIMITS_FAIL_OPEN="1")
        gateways.append(open_)
        worker = celery_worker(flush_seconds=0.3, extra_env={"REDIS_URL": store.url, "CELERY_BROKER_URL": store.url})
        worker_pid = worker.process.pid
        gateway_pids = [gateway.process.pid for gateway in gateways]
        traffic_closed = Traffic(closed.url, key, "sim-fast")
        traffic_open = Traffic(open_.url, key, "sim-fast", concurrency=3)
        timeline = {}

        async def scenario():
            runs = [asyncio.create_task(traffic_closed.run()), asyncio.create_task(traffic_open.run())]
            await asyncio.sleep(2.0)
            timeline["down"] = time.monotonic()
            await asyncio.to_thread(store.kill)
            await asyncio.sleep(6.0)
            await asyncio.to_thread(store.start)
            timeline["up"] = time.monotonic()
            await asyncio.sleep(10.0)
            traffic_closed.stopping = traffic_open.stopping = True
            await asyncio.gather(*runs)

        asyncio.run(scenario())
        down, up = timeline["down"], timeline["up"]

        # Fail closed: only complete answers and clear 503s, in each client's dialect.
        outcomes = traffic_closed.outcomes
        refused = [o for o in outcomes if o.status != 200]
        assert refused, "no request met the outage"
        for outcome in refused:
            _check_store_unavailable(outcome)
            assert down <= outcome.ended <= up + 5.0, (outcome.started - down, outcome.ended - down)
        assert {o.dialect for o in refused} == {"openai", "anthropic"}
        for outcome in traffic_closed.served():
            _check_served(outcome)
        # Back within 5 s: everything that started from 5 s after Redis returned was served.
        after = [o for o in outcomes if o.started >= up + 5.0]
        assert len(after) > 20 and all(o.status == 200 for o in after)
        recovered_at = min(o.ended for o in outcomes if o.status == 200 and o.started >= up)
        recovery = recovered_at - up
        assert recovery < 5.0, recovery

        # Fail open: every request served, during the outage too.
        assert all(o.status == 200 for o in traffic_open.outcomes), [
            (o.status, o.body[:200]) for o in traffic_open.outcomes if o.status != 200
        ]
        during = [o for o in traffic_open.outcomes if down < o.started < up]
        assert during, "the fail-open gateway served nothing during the outage"
        for outcome in traffic_open.outcomes:
            _check_served(outcome)

        # No restarts, no tracebacks.
        assert worker.alive and worker.process.pid == worker_pid
        assert [gateway.process.poll() for gateway in gateways] == [None, None]
        assert [gateway.process.pid for gateway in gateways] == gateway_pids
        for gateway in gateways:
            assert "Traceback" not in gateway.log(), gateway.log()[-3000:]

        # Usage of every served request (those held in process during the outage included), exactly once.
        served_ids = {o.request_id for o in traffic_closed.served() + traffic_open.served()}
        flush_seconds = _wait_records(served_ids, timeout=60)
        _assert_exactly_once(served_ids)
        assert not UsageRecord.objects.filter(request_id__in={o.request_id for o in refused}).exists()
        assert store.client().llen(USAGE_DEAD_KEY) == 0
        print(
            f"redis outage {up - down:.1f}s: {len(refused)} answered 503, {len(traffic_closed.served())} + "
            f"{len(traffic_open.served())} served ({len(during)} fail-open during the outage); first success "
            f"{recovery:.2f}s after redis returned; all {len(served_ids)} records {flush_seconds:.1f}s later"
        )
    finally:
        for gateway in gateways:
            gateway.stop()
        store.stop()


def test_worker_down_queue_grows_then_flushed_exactly_once(gateway_factory, fresh_simulator, celery_worker):
    """The Celery worker (with its beat) stopped for 12 s under traffic: the queue grows, no record is
    written meanwhile, and once it is back every request is recorded exactly once."""
    key = _routing_data(fresh_simulator)
    gateway = gateway_factory()
    worker = celery_worker(flush_seconds=0.3)
    traffic = Traffic(gateway.url, key, "sim-fast", concurrency=4)
    samples: list[tuple[float, int, int]] = []

    async def scenario():
        run = asyncio.create_task(traffic.run())
        await asyncio.sleep(2.0)
        await asyncio.to_thread(worker.stop)
        stopped = time.monotonic()
        while time.monotonic() - stopped < 12.0:
            count = await asyncio.to_thread(UsageRecord.objects.count)
            samples.append((time.monotonic() - stopped, redis_sync().llen(USAGE_QUEUE_KEY), count))
            await asyncio.sleep(1.0)
        traffic.stopping = True
        await run

    asyncio.run(scenario())
    assert len(samples) >= 10
    queue_lengths = [length for _, length, _ in samples]
    assert queue_lengths == sorted(queue_lengths) and queue_lengths[-1] > queue_lengths[0] + 50, samples
    # The last flush may still land just after the stop; from then on nothing is written.
    assert len({count for _, _, count in samples[1:]}) == 1, samples

    served = traffic.served()
    assert len(served) == len(traffic.outcomes), [o.body[:200] for o in traffic.outcomes if o.status != 200]
    restarted = time.monotonic()
    worker.start()
    worker.wait_ready()
    ids = {o.request_id for o in served}
    _wait_records(ids, timeout=60)
    flush_seconds = time.monotonic() - restarted
    time.sleep(1.0)
    _assert_exactly_once(ids)
    assert redis_sync().llen(USAGE_QUEUE_KEY) == 0 and redis_sync().llen(USAGE_DEAD_KEY) == 0
    print(f"worker down 12s: queue grew to {queue_lengths[-1]}; {len(ids)} records {flush_seconds:.1f}s after restart")


def test_database_locked_during_flushes(gateway_factory, fresh_simulator, celery_worker):
    """Another connection keeps the usage table from being written for 8 s (longer than the flush lock:
    SQLite's write lock, PostgreSQL's EXCLUSIVE table lock) while two workers flush: they wait, lose their
    Redis lock, run again; afterwards every request is recorded exactly once and nothing went to the
    dead-letter list."""
    key = _routing_data(fresh_simulator)
    gateway = gateway_factory()
    celery_worker(flush_seconds=0.3)
    celery_worker(beat=False)
    traffic = Traffic(gateway.url, key, "sim-fast", concurrency=4)
    held = {}

    async def scenario():
        run = asyncio.create_task(traffic.run())
        await asyncio.sleep(2.0)
        locker = database_locker()
        database_lock_writes(locker, "accounts_usagerecord")
        held["before"] = locker.execute("SELECT COUNT(*) FROM accounts_usagerecord").fetchone()[0]
        await asyncio.sleep(8.0)
        held["during"] = locker.execute("SELECT COUNT(*) FROM accounts_usagerecord").fetchone()[0]
        held["queued"] = redis_sync().llen(USAGE_QUEUE_KEY)
        locker.execute("COMMIT")
        locker.close()
        await asyncio.sleep(3.0)
        traffic.stopping = True
        await run

    asyncio.run(scenario())
    assert held["during"] == held["before"] and held["queued"] > 50, held
    served = traffic.served()
    assert len(served) == len(traffic.outcomes)
    ids = {o.request_id for o in served}
    flush_seconds = _wait_records(ids, timeout=60)
    time.sleep(1.0)
    _assert_exactly_once(ids)
    assert redis_sync().llen(USAGE_DEAD_KEY) == 0
    print(f"database locked 8s with {held['queued']} queued; all {len(ids)} records {flush_seconds:.1f}s after")


def _usage_event(request_id: str) -> dict:
    return {
        "request_id": request_id,
        "model": "m",
        "endpoint": "chat.completions",
        "status_code": 200,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "created_at": time.time(),
    }


def test_flush_while_the_database_refuses_keeps_the_batch_for_the_next_run():
    """A flush that gives up waiting for the database's lock ("database is locked" on SQLite, a lock
    timeout on PostgreSQL) writes nothing, keeps every event queued and releases its lock; the next run
    writes each event once."""

    async def push():
        for index in range(30):
            await usage_record(_usage_event(f"locked-{index}"))

    asyncio.run(push())
    locker = database_locker()
    try:
        with database_lock_wait(0.5):
            database_lock_writes(locker, "accounts_usagerecord")
            assert usage_flush(batch_size=10) == 0
            assert redis_sync().llen(USAGE_QUEUE_KEY) == 30
            assert redis_sync().get("gw:usage:flush-lock") is None
            locker.execute("COMMIT")
            assert usage_flush(batch_size=10) == 30
            assert usage_flush(batch_size=10) == 0
    finally:
        locker.close()
    assert UsageRecord.objects.filter(request_id__startswith="locked-").count() == 30
    assert redis_sync().llen(USAGE_QUEUE_KEY) == 0 and redis_sync().llen(USAGE_DEAD_KEY) == 0


def test_flush_with_redis_unreachable_returns_quietly(settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path / 'nothing.sock'}"
    assert usage_flush(batch_size=10) == 0


def test_limits_store_down_refuses_with_503_unless_fail_open(settings, tmp_path):
    from accounts.context import KeyContext
    from accounts.limits import limits_admit
    from aigateway.errors import GatewayError

    settings.REDIS_URL = f"unix://{tmp_path / 'nothing.sock'}"
    ctx = KeyContext(
        key_id=99, key_prefix="sk-gw-x", key_name="k", owner_id=1, is_staff=False, tier_name="t",
        rpm=10, tpm=None, max_concurrent=None, daily_tokens=None, max_output_tokens=None, max_compare_models=4,
    )  # fmt: skip

    async def admit():
        return await limits_admit(ctx, estimate_tokens=10, request_id="req_down")

    with pytest.raises(GatewayError) as refused:
        asyncio.run(admit())
    assert refused.value.status == 503 and refused.value.code == "limits_unavailable"
    assert refused.value.headers["retry-after"]
    settings.GATEWAY_LIMITS_FAIL_OPEN = True
    assert asyncio.run(admit()).allowed
