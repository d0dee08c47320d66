"""A compare client that stops reading holds the providers back, over SSE and over the playground
websocket: each model buffers a bounded number of events, so the upstream is read only as fast as the
client reads (as the chat endpoint's stream is). A real gateway process, the simulator, real Redis,
raw sockets over loopback (a client library would keep reading for us)."""

import socket
import time

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from accounts.keys import key_hash
from accounts.models import ApiKey
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Write me a very long answer"}]
TOKENS = 200_000  # per model, as fast as the simulator can send them
# Tokens of 400 characters (an answer of 80 MB): the kernel's socket buffers on the way (tens of MB at
# most) cannot hold half of it.
UPSTREAM = {
    "huge-a": f"sim-echo?tokens={TOKENS}&token_bytes=400",
    "huge-b": f"sim-mini?tokens={TOKENS}&token_bytes=400",
}
# The client's receive window: a client on a slow link, whose socket fills early.
CLIENT_WINDOW = 64 * 1024


@pytest.fixture
def huge_models(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    for name, upstream in UPSTREAM.items():
        model_create(name, [(sim, upstream, 0)])


def _key() -> tuple[str, int]:
    plaintext = key_create("stops-reading", max_concurrent=10, max_compare_models=4)
    return plaintext, ApiKey.objects.get(key_hash=key_hash(plaintext)).id


def _client_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_WINDOW)
    sock.settimeout(15)
    sock.connect((host, int(port)))
    return sock


def _read_until(sock: socket.socket, received: bytes, marker: bytes) -> bytes:
    while marker not in received:
        data = sock.recv(65536)
        assert data, f"the gateway closed the connection; got {received[:500]!r}"
        received += data
    return received


def _upstream_tokens(simulator) -> dict[str, int]:
    return {r["model"]: r["tokens_sent"] for r in simulator.requests() if r["model"] in UPSTREAM.values()}


def _held_back(simulator) -> dict[str, int]:
    """The tokens each upstream had sent once it stopped moving (or after 30 s)."""
    last, still_since, started = None, time.monotonic(), time.monotonic()
    while time.monotonic() - started < 30:
        sent = _upstream_tokens(simulator)
        if sent != last:
            last, still_since = sent, time.monotonic()
        elif time.monotonic() - still_since > 1.5 and len(sent) == len(UPSTREAM):
            break
        time.sleep(0.1)
    return last


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _leases(key_id: int) -> int:
    return redis_sync().zcard(f"gw:rl:{{{key_id}}}:leases")


def _assert_held_back_then_stopped(key_id: int, held: dict[str, int], grown: float, simulator) -> None:
    """While the client read nothing, no provider got to send half its answer and the gateway's memory
    stayed flat (without a bound it read every answer to the end into memory: +150 MB here). Once the
    client left, every upstream was closed, each model recorded as 499, and the leases came back."""
    assert len(held) == len(UPSTREAM), held
    for sent in held.values():
        assert sent < TOKENS // 2, held
    assert grown < 50, f"the gateway grew by {grown:.0f} MB"
    eventually(
        lambda: all(r["disconnected"] for r in simulator.requests() if r["model"] in UPSTREAM.values()),
        timeout=3,
        what="every upstream connection closed",
    )
    events = wait_usage(lambda evs: len([e for e in evs if e["api_key_id"] == key_id]) == len(UPSTREAM), timeout=5)
    for event in (e for e in events if e["api_key_id"] == key_id):
        assert (event["status_code"], event["error_type"]) == (499, "client_disconnected"), event
        assert event["completion_tokens"] > 0, event
    eventually(lambda: _leases(key_id) == 0, timeout=3, what="every lease released")


def test_an_sse_client_that_stops_reading_holds_every_upstream_back(gateway, huge_models, fresh_simulator):
    key, key_id = _key()
    rss = _rss_mb(gateway.process.pid)
    payload = orjson.dumps({"models": list(UPSTREAM), "messages": MESSAGES})
    host = gateway.url.removeprefix("http://")
    sock = _client_socket(gateway.url)
    try:
        sock.sendall(
            f"POST /v1/compare HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = _read_until(sock, b"", b'"type":"chunk"')
        assert head.startswith(b"HTTP/1.1 200"), head[:300]
        # From here on the client reads nothing.
        held = _held_back(fresh_simulator)
        grown = _rss_mb(gateway.process.pid) - rss
    finally:
        sock.close()
    _assert_held_back_then_stopped(key_id, held, grown, fresh_simulator)


def _frames(sock: socket.socket, protocol: ClientProtocol, until: bytes) -> None:
    """Read websocket frames until a text frame contains `until`."""
    seen = False
    while not seen:
        data = sock.recv(65536)
        assert data, "the gateway closed the socket"
        protocol.receive_data(data)
        for frame in protocol.events_received():
            seen = seen or (getattr(frame, "opcode", None) is Opcode.TEXT and until in frame.data)


def test_a_websocket_client_that_stops_reading_holds_every_upstream_back(gateway, huge_models, fresh_simulator):
    key, key_id = _key()
    rss = _rss_mb(gateway.process.pid)
    protocol = ClientProtocol(parse_uri(gateway.url.replace("http://", "ws://") + "/ws/playground/"))
    handshake = protocol.connect()
    handshake.headers["Authorization"] = f"Bearer {key}"
    protocol.send_request(handshake)
    sock = _client_socket(gateway.url)
    try:
        sock.sendall(b"".join(protocol.data_to_send()))
        _frames(sock, protocol, b'"type":"ready"')
        protocol.send_text(orjson.dumps({"type": "chat", "models": list(UPSTREAM), "messages": MESSAGES}))
        sock.sendall(b"".join(protocol.data_to_send()))
        _frames(sock, protocol, b'"type":"chunk"')
        # From here on the client reads nothing.
        held = _held_back(fresh_simulator)
        grown = _rss_mb(gateway.process.pid) - rss
    finally:
        sock.close()
    _assert_held_back_then_stopped(key_id, held, grown, fresh_simulator)
