"""What the API accepts as a request body, end to end (gateway process, simulator, Redis, loopback): JSON
declared as JSON (or not declared at all); a form, multipart or text body is a 415 naming
application/json in the client's dialect; a gzip body is decoded within the body limit (a compression
bomb is a 413, never inflated past it), other codings are a 415; and a body sent in many small writes
costs time in proportion to its size."""

import gzip
import socket
import time

import httpx
import orjson
import psutil
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "hygiene", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGES = {**CHAT, "max_tokens": 20}


@pytest.fixture
def key(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model = model_create("hygiene", [(sim, "sim-echo", 0)])
    return key_create("hygiene", models=[model])


def _post(gateway, path: str, key: str, content: bytes, **headers) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if path != "/v1/messages" else {"x-api-key": key}
    return httpx.post(gateway.url + path, content=content, headers={**auth, **headers}, timeout=30)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
    ],
)
def test_a_body_not_declared_as_json_is_a_415_in_the_clients_dialect(gateway, fresh_simulator, key, content_type):
    body = orjson.dumps(CHAT)
    openai_answer = _post(gateway, "/v1/chat/completions", key, body, **{"content-type": content_type})
    assert openai_answer.status_code == 415
    error = openai_answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_media_type"
    assert "'Content-Type: application/json'" in error["message"] and content_type in error["message"]
    if "form-urlencoded" in content_type:
        assert "curl" in error["message"]  # what `curl -d` sends: the message says how to fix it

    anthropic_answer = _post(gateway, "/v1/messages", key, orjson.dumps(MESSAGES), **{"content-type": content_type})
    assert anthropic_answer.status_code == 415
    assert anthropic_answer.json()["type"] == "error"
    assert anthropic_answer.json()["error"]["type"] == "invalid_request_error"
    assert "application/json" in anthropic_answer.json()["error"]["message"]
    # Refused before anything was relayed.
    assert fresh_simulator.requests() == []


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/json; charset=utf-8", "application/vnd.api+json"]
)
def test_json_is_accepted_declared_or_not(gateway, fresh_simulator, key, content_type):
    headers = {"content-type": content_type} if content_type else {}
    answer = _post(gateway, "/v1/chat/completions", key, orjson.dumps(CHAT), **headers)
    assert answer.status_code == 200, answer.text
    assert len(fresh_simulator.requests()) == 1


def test_a_gzip_body_is_decoded(gateway, fresh_simulator, key):
    prompt = "compressed words " * 2000
    body = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": prompt}]})
    answer = _post(
        gateway,
        "/v1/chat/completions",
        key,
        gzip.compress(body),
        **{"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert answer.status_code == 200, answer.text
    sent = fresh_simulator.requests()
    assert len(sent) == 1 and sent[0]["body"]["messages"][0]["content"] == prompt
    request_id = answer.headers["x-request-id"]
    events = wait_usage(lambda events: any(e["request_id"] == request_id for e in events))
    (event,) = [e for e in events if e["request_id"] == request_id]
    assert event["status_code"] == 200 and event["prompt_tokens"] > 1000

    # Two gzip members are one body; the Anthropic door decodes the same way.
    halves = orjson.dumps(MESSAGES)
    members = gzip.compress(halves[:20]) + gzip.compress(halves[20:])
    anthropic_answer = _post(gateway, "/v1/messages", key, members, **{"content-encoding": "x-gzip"})
    assert anthropic_answer.status_code == 200, anthropic_answer.text


def test_a_gzip_bomb_is_a_413_without_inflating_it(gateway, fresh_simulator, key):
    # 200 MB of zeros in about 200 KB: fifty times GATEWAY_MAX_BODY_BYTES.
    bomb = gzip.compress(b"{" + b" " * (200 * 1024 * 1024) + b"}", compresslevel=9)
    assert len(bomb) < 1024 * 1024
    process = psutil.Process(gateway.process.pid)
    before = process.memory_info().rss
    started = time.monotonic()
    answer = _post(gateway, "/v1/chat/completions", key, bomb, **{"content-encoding": "gzip"})
    elapsed = time.monotonic() - started
    grown = process.memory_info().rss - before
    assert answer.status_code == 413
    assert "once decompressed" in answer.json()["error"]["message"]
    assert grown < 50 * 1024 * 1024, grown
    assert elapsed < 5, elapsed
    assert fresh_simulator.requests() == []


def test_broken_gzip_is_a_400_and_other_codings_a_415(gateway, fresh_simulator, key):
    whole = gzip.compress(orjson.dumps(CHAT))
    truncated = _post(gateway, "/v1/chat/completions", key, whole[:-12], **{"content-encoding": "gzip"})
    assert truncated.status_code == 400 and "gzip" in truncated.json()["error"]["message"]
    not_gzip = _post(gateway, "/v1/chat/completions", key, orjson.dumps(CHAT), **{"content-encoding": "gzip"})
    assert not_gzip.status_code == 400 and "gzip" in not_gzip.json()["error"]["message"]
    for coding in ("br", "deflate", "zstd", "gzip, br"):
        refused = _post(gateway, "/v1/chat/completions", key, whole, **{"content-encoding": coding})
        assert refused.status_code == 415, coding
        assert refused.json()["error"]["code"] == "unsupported_content_encoding"
        assert refused.headers["accept-encoding"] == "gzip"
    anthropic_refused = _post(gateway, "/v1/messages", key, whole, **{"content-encoding": "br"})
    assert anthropic_refused.status_code == 415 and anthropic_refused.json()["type"] == "error"
    identity = _post(gateway, "/v1/chat/completions", key, orjson.dumps(CHAT), **{"content-encoding": "identity"})
    assert identity.status_code == 200, identity.text
    assert len(fresh_simulator.requests()) == 1


# A pause after every write, so the gateway reads the pieces one by one as a slow client's would arrive
# (written back to back, they merge into a few large reads).
PAUSE = 0.0002
PIECE = 1000


def _dribble(url: str, body: bytes, piece: int) -> bytes:
    """POST `body` (no key: the gateway reads it all, then answers 401) in writes of `piece` bytes."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        view = memoryview(body)
        for offset in range(0, len(body), piece):
            sock.sendall(view[offset : offset + piece])
            time.sleep(PAUSE)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _gateway_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def test_a_body_sent_in_small_writes_costs_cpu_linear_in_its_size(gateway):
    process = psutil.Process(gateway.process.pid)
    body = b'{"model": "x", "pad": "' + b"p" * (4_000_000 - 30) + b'"}'
    costs = {}
    for name, size, piece in (("1 MB dribbled", 1_000_000, PIECE), ("4 MB dribbled", 4_000_000, PIECE)):
        part = body[: size - 2] + b'"}'
        before = _gateway_cpu(process)
        answer = _dribble(gateway.url, part, piece)
        costs[name] = _gateway_cpu(process) - before
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    # Four times the bytes in four times the pieces: about four times the CPU (measured 0.04 s and 0.12 s).
    # Appending each piece to the body read so far copied it again every time: 0.07 s and 0.86 s.
    assert costs["4 MB dribbled"] < 8 * max(costs["1 MB dribbled"], 0.05), costs
