"""Redis high availability end to end: a primary, a replica and three sentinels (quorum 2), a gateway process and
a Celery worker with its beat that know only the sentinels (their REDIS_URL names a closed port and lends only
the master's password and database). The primary is killed (SIGKILL) under HTTP traffic on a key with limits,
with a key's playground socket running chats and a browser's playground socket open; the sentinels promote the
replica, and everything carries on against it without a restart.

What "no usage lost or doubled" means here: every request answered 200 (over HTTP, or a socket's model that
ended `done`) has exactly one usage record, those in flight at the kill included (their event is pushed after
it: held in the process and pushed again once the new master answers); a request refused during the failover
(503, never admitted) has none; no admitted request is left with a started marker (it would later be booked as
`lost`). The time without service is measured from the first failed response to the first served one after it.
"""

import asyncio
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from django.contrib.auth import get_user_model
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from accounts.models import Tier, UsageRecord
from accounts.services import api_key_issue
from accounts.usage import USAGE_DEAD_KEY, USAGE_INFLIGHT_KEY, USAGE_QUEUE_KEY
from tests.support.celery import CeleryWorkerProcess
from tests.support.data import model_create, provider_create
from tests.support.database import database_url_for_subprocess
from tests.support.gateway import gateway_start
from tests.support.ports import free_port
from tests.support.sentinel import MASTER_NAME, SentinelCluster

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-ha-alice-1234"
MODEL = "ha-sim"
DB = 3
LIMITS = {"rpm": 1_000_000, "tpm": 10**9, "max_concurrent": 1000, "max_compare_models": 2}


@dataclass
class Outcome:
    dialect: str
    started: float
    ended: float
    status: int
    request_id: str | None
    body: bytes
    headers: httpx.Headers


@dataclass
class Run:
    """One chat on the key's socket: its model's result in the `complete` frame."""

    started: float
    ended: float
    result: dict


@dataclass
class Scenario:
    gateway_url: str
    key: str
    outcomes: list[Outcome] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    stopping: bool = False
    socket_closed: object = None

    async def http(self, client: httpx.AsyncClient, index: int) -> None:
        text = f"request {index}"
        if index % 2:
            dialect, path, headers = "anthropic", "/v1/messages", {"x-api-key": self.key}
            body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
        else:
            dialect, path, headers = "openai", "/v1/chat/completions", {"Authorization": f"Bearer {self.key}"}
            body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": text}]}
        started = time.monotonic()
        response = await client.post(self.gateway_url + path, json=body, headers=headers)
        self.outcomes.append(
            Outcome(
                dialect,
                started,
                time.monotonic(),
                response.status_code,
                response.headers.get("x-request-id"),
                response.content,
                response.headers,
            )
        )

    async def traffic(self, concurrency: int = 4) -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def loop(worker: int) -> None:
                index = worker
                while not self.stopping:
                    await self.http(client, index)
                    index += concurrency
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(loop(worker) for worker in range(concurrency)))

    async def key_socket(self) -> None:
        """Chats one after another on one socket opened before the kill, until told to stop."""
        url = self.gateway_url.replace("http://", "ws://") + "/ws/playground/"
        async with ws_connect(url, additional_headers={"Authorization": f"Bearer {self.key}"}) as ws:
            assert orjson.loads(await ws.recv()) == {"type": "ready", "auth": "key"}
            try:
                while not self.stopping:
                    started = time.monotonic()
                    chat = {"type": "chat", "models": [MODEL], "messages": [{"role": "user", "content": "hi"}]}
                    await ws.send(orjson.dumps(chat).decode())
                    while (frame := orjson.loads(await asyncio.wait_for(ws.recv(), 20)))["type"] != "complete":
                        pass
                    self.runs.append(Run(started, time.monotonic(), frame["results"][MODEL]))
                    await asyncio.sleep(0.1)
            except ConnectionClosed as closed:
                self.socket_closed = closed


def _browser_login(gateway_url: str) -> httpx.Client:
    browser = httpx.Client(base_url=gateway_url, timeout=10)
    page = browser.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    answer = browser.post("/login/", data={"username": "ha-alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert answer.status_code == 302, answer.text
    return browser


def _check_refused(outcome: Outcome) -> None:
    """A request met the failover: a 503 in its client's error shape, naming why, never admitted."""
    assert outcome.status == 503, (outcome.status, outcome.body[:300])
    error = orjson.loads(outcome.body)
    if outcome.dialect == "openai":
        assert error["error"]["code"] == "limits_unavailable", error
    else:
        assert error["type"] == "error" and error["error"]["type"] == "api_error", error
    assert "rate-limit store unavailable" in error["error"]["message"]


def _check_served(outcome: Outcome) -> None:
    if outcome.dialect == "openai":
        assert outcome.body.rstrip().endswith(b"data: [DONE]"), outcome.body[-300:]
        assert int(outcome.headers["x-ratelimit-remaining-requests"]) > 0
    else:
        assert orjson.loads(outcome.body)["type"] == "message", outcome.body[:300]


def _worker(tmp_path: Path, redis_url: str, ha_env: dict[str, str]) -> CeleryWorkerProcess:
    env = {name: value for name, value in os.environ.items() if name != "CELERY_BROKER_URL"}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "aigateway.settings",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url_for_subprocess(),
            "GATEWAY_USAGE_FLUSH_SECONDS": "0.3",
            "GATEWAY_HEALTH_CHECK_SECONDS": "3600",
            "PYTHONUNBUFFERED": "1",
            **ha_env,
        }
    )
    workdir = tmp_path / "worker"
    workdir.mkdir()
    return CeleryWorkerProcess(env=env, beat=True, loglevel="warning", workdir=workdir).start()


def _wait_records(request_ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        stored = set(UsageRecord.objects.filter(request_id__in=request_ids).values_list("request_id", flat=True))
        if stored == request_ids:
            return
        assert time.monotonic() < deadline, f"{len(request_ids - stored)} of {len(request_ids)} usage records missing"
        time.sleep(0.2)


def test_a_primary_killed_under_traffic_fails_over_without_a_restart(tmp_path, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create(MODEL, [(sim, "sim-echo?tokens=20&interval_ms=15", 0)])
    tier = Tier.objects.create(name="ha", **LIMITS)
    key = api_key_issue(owner=get_user_model().objects.create_user("ha-program"), tier=tier, name="ha").plaintext
    alice = get_user_model().objects.create_user("ha-alice", password=PASSWORD)
    api_key_issue(owner=alice, tier=tier, name="alice")

    password = "pw-" + secrets.token_hex(8)
    cluster = SentinelCluster(tmp_path / "ha", password=password, sentinel_password="sp-" + secrets.token_hex(8))
    cluster.start()
    # Nothing listens there: every connection must go through the sentinels.
    redis_url = f"redis://:{password}@127.0.0.1:{free_port()}/{DB}"
    ha_env = {
        "REDIS_SENTINELS": cluster.addresses,
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
        "REDIS_SENTINEL_PASSWORD": cluster.sentinel_password,
    }
    gateway = worker = None
    try:
        gateway = gateway_start(redis_url, tmp_path, **ha_env)
        worker = _worker(tmp_path, redis_url, ha_env)
        scenario = Scenario(gateway.url, key)

        # Before the kill: served, and flushed to the database by the worker, all through the sentinels.
        async def warm_up() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await scenario.http(client, 0)

        asyncio.run(warm_up())
        assert scenario.outcomes[0].status == 200, scenario.outcomes[0].body
        _wait_records({scenario.outcomes[0].request_id}, timeout=20)
        old_master = cluster.master()
        assert old_master is cluster.nodes[0]
        assert old_master.client(db=DB).exists(USAGE_QUEUE_KEY) == 0  # flushed there, in REDIS_URL's database
        pids = (gateway.process.pid, worker.process.pid)

        browser = _browser_login(gateway.url)
        timeline: dict[str, float] = {}
        logout: dict[str, object] = {}

        async def session_socket(ws) -> None:
            try:
                while True:
                    logout.setdefault("frames", []).append(orjson.loads(await ws.recv()))
            except ConnectionClosed as closed:
                logout["closed_at"] = time.monotonic()
                logout["code"] = closed.rcvd.code if closed.rcvd else None

        async def run() -> None:
            url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
            headers = {"Cookie": f"sessionid={browser.cookies['sessionid']}", "Origin": gateway.url}
            async with ws_connect(url, additional_headers=headers) as session_ws:
                assert orjson.loads(await session_ws.recv()) == {"type": "ready", "auth": "session"}
                watcher = asyncio.create_task(session_socket(session_ws))
                tasks = [asyncio.create_task(scenario.traffic()), asyncio.create_task(scenario.key_socket())]
                await asyncio.sleep(2.0)
                timeline["kill"] = time.monotonic()
                await asyncio.to_thread(old_master.kill)
                while cluster.master_port() in (None, old_master.port):
                    assert time.monotonic() - timeline["kill"] < 15, "no replica promoted"
                    await asyncio.sleep(0.05)
                timeline["promoted"] = time.monotonic()
                await asyncio.sleep(4.0)
                assert "closed_at" not in logout, logout  # the browser's socket outlived the failover
                timeline["logout"] = time.monotonic()
                answer = await asyncio.to_thread(
                    browser.post, "/logout/", headers={"X-CSRFToken": browser.cookies["csrftoken"]}
                )
                assert answer.status_code in (200, 302), answer.text
                await asyncio.wait_for(watcher, 5)
                scenario.stopping = True
                await asyncio.gather(*tasks)

        asyncio.run(run())
        kill, promoted = timeline["kill"], timeline["promoted"]
        new_master = cluster.master()

        # Every process carried on: same pids, no traceback.
        assert gateway.process.poll() is None and worker.alive
        assert (gateway.process.pid, worker.process.pid) == pids
        assert "Traceback" not in gateway.log(), gateway.log()[-3000:]

        # HTTP: only complete answers and clear 503s, the 503s within the failover; served again at once after.
        outcomes = scenario.outcomes[1:]
        refused = [o for o in outcomes if o.status != 200]
        served = [o for o in outcomes if o.status == 200]
        for outcome in refused:
            _check_refused(outcome)
            assert kill <= outcome.ended <= promoted + 2.0, (outcome.ended - kill, promoted - kill)
        for outcome in served:
            _check_served(outcome)
        after = [o for o in outcomes if o.started >= promoted + 2.0]
        assert len(after) > 10 and all(o.status == 200 for o in after)
        first_failure = min((o.ended for o in refused), default=None)
        if first_failure is not None:
            first_success = min(o.ended for o in served if o.started >= first_failure)
        else:
            first_success = min(o.ended for o in served if o.started >= kill)
        in_flight = [o for o in served if o.started < kill < o.ended]
        assert in_flight, "no request was in flight at the kill"
        # Their usage events met the failover: held in the process, queued once the new master answered.
        log = gateway.log()
        assert "events held for retry" in log and "usage queue reachable again" in log, log[-3000:]

        # The key's socket stayed open; its chats ran before, failed clearly during, and ran after the failover.
        assert scenario.socket_closed is None, scenario.socket_closed
        for run_ in scenario.runs:
            if run_.result["status"] != "done":
                assert run_.result["status"] == "error", run_.result
                assert run_.result["error"]["code"] == "limits_unavailable", run_.result
                assert kill <= run_.ended <= promoted + 2.0
        assert [r for r in scenario.runs if r.started >= promoted + 1.0 and r.result["status"] == "done"]
        # The browser's socket heard its logout (sent through the channel layer after the failover).
        assert logout.get("code") == 4401, logout
        assert logout["closed_at"] - timeline["logout"] < 3.0

        # Usage: every served request recorded exactly once, the refused ones not at all, nothing left behind.
        served_ids = {o.request_id for o in [scenario.outcomes[0], *served]}
        served_ids |= {r.result["request_id"] for r in scenario.runs if r.result["status"] == "done"}
        refused_ids = {o.request_id for o in refused}
        refused_ids |= {r.result["request_id"] for r in scenario.runs if r.result["status"] != "done"}
        _wait_records(served_ids, timeout=30)
        client = new_master.client(db=DB)
        deadline = time.monotonic() + 10
        while client.llen(USAGE_QUEUE_KEY) or client.hlen(USAGE_INFLIGHT_KEY):
            assert time.monotonic() < deadline, (client.llen(USAGE_QUEUE_KEY), client.hgetall(USAGE_INFLIGHT_KEY))
            time.sleep(0.2)
        rows = list(UsageRecord.objects.filter(api_key__tier=tier).values_list("request_id", "status_code"))
        assert sorted(request_id for request_id, _ in rows) == sorted(served_ids)
        assert {status for _, status in rows} == {200}
        assert not UsageRecord.objects.filter(request_id__in=refused_ids).exists()
        assert client.llen(USAGE_DEAD_KEY) == 0
        # A call whose settlement could not reach Redis keeps its concurrency lease until the lease TTL (a
        # settlement is not sent twice: it adds the call's spend); only calls that ended during the failover.
        leases = sum(client.zcard(lease_key) for lease_key in client.scan_iter("gw:rl:*:leases"))
        ended_during = [o for o in served if kill <= o.ended <= promoted + 2.0]
        ended_during += [r for r in scenario.runs if kill <= r.ended <= promoted + 2.0]
        assert leases <= len(ended_during), (leases, len(ended_during))

        print(
            f"\nfailover: primary killed, replica promoted {promoted - kill:.2f}s later; first failed response "
            f"{(first_failure or kill) - kill:.2f}s after the kill, first served after it "
            f"{first_success - (first_failure or kill):.2f}s later (without service: "
            f"{first_success - (first_failure or kill):.2f}s); {len(refused)} HTTP 503 of {len(outcomes)}, "
            f"{len(in_flight)} in flight at the kill, {len(scenario.runs)} socket chats "
            f"({sum(r.result['status'] != 'done' for r in scenario.runs)} refused); "
            f"{len(served_ids)} usage records, each once; {leases} leases left to expire"
        )
    finally:
        if gateway is not None:
            gateway.stop()
        if worker is not None:
            worker.stop()
            print(worker.log()[-4000:])
        cluster.stop()
