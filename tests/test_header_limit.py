"""The production server (uvicorn with aigateway.server's protocol) refuses a request whose request line and
headers pass GATEWAY_MAX_HEADER_BYTES with a 431 in the client's dialect and closes the connection, without
holding the oversized header in memory; smaller heads, and the requests after a refusal, are served."""

import socket
import threading
import time

import httpx
import orjson
import psutil
import pytest

from tests.support.data import key_create

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


def _exchange(url: str, head: bytes, filler: int = 0) -> tuple[bytes, float]:
    """Send `head` with a header of `filler` more bytes in the middle (sent by a second thread, as a client
    that writes its request while the server answers), read until the server closes; the answer and how
    long the server took to close."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        first, rest = head.split(b"\r\n", 1)

        def write() -> None:
            try:
                sock.sendall(first + b"\r\nX-Filler: ")
                block = b"f" * MIB
                sent = 0
                while sent < filler:
                    sock.sendall(block[: min(MIB, filler - sent)])
                    sent += MIB
                sock.sendall(b"\r\n" + rest)
            except OSError:
                pass  # the server closed while we were still writing: what a refused client sees

        writer = threading.Thread(target=write)
        started = time.monotonic()
        writer.start()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        closed_after = time.monotonic() - started
        writer.join(timeout=30)
    return answer, closed_after


def _status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body) if body.startswith(b"{") else {}


def _head(path: str, **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_8_mb_header_is_a_431_in_the_clients_dialect_and_the_connection_closes(gateway):
    answer, closed_after = _exchange(gateway.url, _head("/v1/models"), filler=8 * MIB)
    status, body = _status_and_json(answer)
    assert status == 431, answer[:300]
    assert body["error"]["code"] == "request_headers_too_large"
    assert "65536 bytes" in body["error"]["message"]
    assert b"connection: close" in answer.lower()
    assert closed_after < 10

    answer, _ = _exchange(gateway.url, _head("/v1/messages", **{"anthropic-version": "2023-06-01"}), filler=8 * MIB)
    status, body = _status_and_json(answer)
    assert status == 431
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"

    # The next request, on a new connection, is served as usual.
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200


def test_the_limit_is_on_the_whole_head_not_one_header(gateway):
    many = {f"x-small-{n}": "v" * 60 for n in range(1200)}  # about 80 KiB in 1,200 short headers
    answer, _ = _exchange(gateway.url, _head("/health", **many))
    assert _status_and_json(answer)[0] == 431
    long_target = "/v1/models?" + "q" * (70 * 1024)
    answer, _ = _exchange(gateway.url, _head(long_target))
    assert _status_and_json(answer)[0] == 431


def test_a_head_under_the_limit_is_served(gateway):
    key = key_create("headers")
    # 60 KiB of headers, the key among them: under the 64 KiB limit.
    headers = {"Authorization": f"Bearer {key}", **{f"x-pad-{n}": "p" * 1000 for n in range(60)}}
    answer = httpx.get(gateway.url + "/v1/models", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    # Kept alive: several requests with large heads on one connection.
    with httpx.Client(timeout=10) as client:
        for _ in range(3):
            assert client.get(gateway.url + "/v1/models", headers=headers).status_code == 200


def test_the_limit_is_a_setting(gateway_factory):
    small = gateway_factory(GATEWAY_MAX_HEADER_BYTES="4096")
    refused, _ = _exchange(small.url, _head("/health", **{"x-pad": "p" * 8000}))
    assert _status_and_json(refused)[0] == 431
    assert "4096 bytes" in _status_and_json(refused)[1]["error"]["message"]
    assert httpx.get(small.url + "/health", headers={"x-pad": "p" * 3000}, timeout=10).status_code == 200


def test_three_60_mb_headers_do_not_grow_the_servers_memory(gateway_factory):
    gateway = gateway_factory()
    process = psutil.Process(gateway.process.pid)
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200
    before = process.memory_info().rss
    peak = before
    sending = True

    def sample() -> None:
        nonlocal peak
        while sending:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for _ in range(3):
            answer, closed_after = _exchange(gateway.url, _head("/v1/chat/completions"), filler=60 * MIB)
            assert _status_and_json(answer)[0] == 431
            assert closed_after < 5
    finally:
        sending = False
        sampler.join()
    after = process.memory_info().rss
    print(f"gateway RSS {before / MIB:.1f} MiB before, peak {peak / MIB:.1f}, {after / MIB:.1f} after")
    # The parser held each header whole while it arrived: 60 MiB and more at the peak.
    assert peak - before < 20 * MIB, (before, peak, after)
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200
