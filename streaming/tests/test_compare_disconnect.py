"""A /v1/compare client that leaves at any moment stops every model at once: each upstream connection
is closed, each model is recorded as 499 with the tokens it had, and every concurrency lease comes back.

With SSE keepalives on, the stream waits for its next event with a timeout; a disconnect that lands
just as an event arrives must still stop the run. Answers of a token every 2 ms from four models of
several runs at once keep events arriving all the time, so some disconnects meet one (at 50 ms a token
that moment is rare), and answers of 10,000 tokens make a model left running plain to see. A real
gateway process, the simulator, real Redis, loopback."""

import socket
import threading
import time

import orjson
import pytest

from accounts.keys import key_hash
from accounts.models import ApiKey
from accounts.usage import USAGE_INFLIGHT_KEY
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import gateway_start
from tests.support.usage import usage_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Compare these, please"}]
TOKENS = 10_000  # per model, one every 2 ms: a model that is not stopped runs for 20 s
# The first token comes after 300 ms, so a client leaving as the headers arrive has no chunk yet. The four
# answers tick together: a client leaving as it reads one event leaves while the others are relayed.
MODELS = {
    f"long-{n}": f"{upstream}?tokens={TOKENS}&interval_ms=2&ttft_ms=300"
    for n, upstream in enumerate(("sim-echo", "sim-mini", "sim-large", "sim-claude"))
}
RUNS = 8  # concurrent runs per disconnect point


@pytest.fixture(scope="module")
def keepalive_gateway(redis_server, tmp_path_factory, django_db_setup):
    """A gateway whose compare streams wait for events with a short keepalive timeout."""
    handle = gateway_start(
        redis_server, tmp_path_factory.mktemp("compare-disconnect"), GATEWAY_SSE_KEEPALIVE_SECONDS="0.2"
    )
    yield handle
    handle.stop()


@pytest.fixture
def long_models(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    for name, upstream in MODELS.items():
        model_create(name, [(sim, upstream, 0)])


def _key() -> tuple[str, int]:
    plaintext = key_create("compare-leavers", max_concurrent=100, max_compare_models=4)
    return plaintext, ApiKey.objects.get(key_hash=key_hash(plaintext)).id


def _request(url: str, key: str) -> bytes:
    payload = orjson.dumps({"models": list(MODELS), "messages": MESSAGES})
    host = url.removeprefix("http://")
    return (
        f"POST /v1/compare HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def _compare_then_leave(url: str, key: str, point: str, closed: list) -> None:
    """Send a compare request over a raw socket and close it at `point`; append (close time, chunks read),
    or the failure."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    chunks = 0
    try:
        sock.sendall(_request(url, key))
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200"), received[:300]
        if point == "after_headers":
            return
        wanted = {"after_3_chunks": 3, "mid_stream": 2000}[point]
        while chunks < wanted:
            data = sock.recv(65536)
            assert data, "the gateway closed the stream first"
            received += data
            chunks = received.count(b'"type":"chunk"')
    except Exception as exc:
        closed.append(exc)
    finally:
        sock.close()
        closed.append((time.monotonic(), chunks))


def _leases(key_id: int) -> int:
    return redis_sync().zcard(f"gw:rl:{{{key_id}}}:leases")


def _markers(key_id: int) -> int:
    markers = redis_sync().hvals(USAGE_INFLIGHT_KEY)
    return sum(1 for raw in markers if orjson.loads(raw)["api_key_id"] == key_id)


def _state(key_id: int) -> str:
    records = [(r["status_code"], r["completion_tokens"]) for r in _records(key_id)]
    recorded = {r["request_id"] for r in _records(key_id)}
    markers = [orjson.loads(raw) for raw in redis_sync().hvals(USAGE_INFLIGHT_KEY)]
    left = [(m["request_id"], m["request_id"] in recorded) for m in markers if m["api_key_id"] == key_id]
    return f"records {records}, markers (request id, recorded) {left}, leases {_leases(key_id)}"


def _records(key_id: int) -> list[dict]:
    return [event for event in usage_events() if event["api_key_id"] == key_id]


@pytest.mark.parametrize("point", ["after_headers", "after_3_chunks", "mid_stream"])
def test_a_client_leaving_stops_every_model_at_once(keepalive_gateway, long_models, fresh_simulator, point):
    key, key_id = _key()
    closed: list = []
    clients = [
        threading.Thread(target=_compare_then_leave, args=(keepalive_gateway.url, key, point, closed))
        for _ in range(RUNS)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=30)
    assert len(closed) == RUNS, closed
    last_close = max(moment for moment, _ in closed)

    # Every call is finished (no "started" marker left) and its lease released within a few seconds,
    # not when its 20 s answer would have ended.
    try:
        eventually(
            lambda: len(_records(key_id)) == RUNS * len(MODELS) and _markers(key_id) == 0 and _leases(key_id) == 0,
            timeout=4,
            what="every model of every run recorded, its marker and lease gone",
        )
    except AssertionError as failure:
        raise AssertionError(f"{failure}: {_state(key_id)}") from None
    assert time.monotonic() - last_close < 5
    records = _records(key_id)
    for record in records:
        assert (record["status_code"], record["error_type"]) == (499, "client_disconnected"), record
        assert record["completion_tokens"] < TOKENS // 5, record
    # Tokens so far are billed: at least the chunks the clients read.
    assert sum(record["completion_tokens"] for record in records) >= sum(chunks for _, chunks in closed)

    # The simulator saw every upstream connection close, far from the end of its answer.
    upstream = set(MODELS.values())

    def upstreams_closed() -> bool:
        requests = [r for r in fresh_simulator.requests() if r["model"] in upstream]
        return all(r["disconnected"] for r in requests)

    eventually(upstreams_closed, timeout=2, what="every upstream connection closed")
    for request in fresh_simulator.requests():
        assert request["tokens_sent"] < TOKENS // 5, request
