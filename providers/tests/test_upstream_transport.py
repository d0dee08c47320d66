"""The upstream transport (aiohttp's client under httpx's API, providers.upstream_transport) against raw
loopback servers that write exact bytes: framing, keep-alive, failures, timeouts, cancellation, decoding
and TLS."""

import asyncio
import contextlib
import socket
import ssl
import time
import tracemalloc
import zlib

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.upstream import UpstreamBodyTooLarge, upstream_body_read
from providers.upstream_policy import UpstreamResolver
from providers.upstream_transport import UpstreamTransport
from tests.support.compression import gzip_bomb
from tests.support.ports import free_port
from tests.support.raw_upstream import RawUpstream, answer_each
from tests.support.tls import self_signed_certificate

TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def transport():
    transport = UpstreamTransport(max_connections=8, name="raw")
    yield transport
    await transport.aclose()


async def fetch(transport: UpstreamTransport, url: str, method: str = "POST", body: bytes = b"{}", headers=()):
    response = await transport.send(method, url, list(headers), body, TIMEOUTS)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


# Framing ------------------------------------------------------------------------------------------


async def test_content_length_body(transport):
    async with RawUpstream(answer_each(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Id: 7\r\n\r\nhello")) as up:
        response = await fetch(transport, up.url + "/v1/x")
    assert response.status_code == 201
    assert response.reason_phrase == "Created"
    assert response.http_version == "HTTP/1.1"
    assert response.headers["x-id"] == "7"
    assert response.content == b"hello"
    assert transport.busy == 0


async def test_chunked_body_is_yielded_chunk_by_chunk_as_it_arrives(transport):
    """The server sends each chunk only after the client has yielded the previous one: a client that
    held chunks back would stall here until the read timeout."""
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    yielded = [asyncio.Event() for _ in pieces]
    sent_at: list[float] = []

    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        for piece, event in zip(pieces, yielded, strict=True):
            await asyncio.sleep(0.1)
            sent_at.append(time.monotonic())
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.wait_for(event.wait(), 1.0)
        writer.write(b"0\r\nX-Trailer: done\r\n\r\n")
        await writer.drain()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        response = await transport.send("POST", up.url + "/stream", [], b"{}", TIMEOUTS)
        received: list[tuple[float, bytes]] = []
        async for chunk in response.aiter_bytes():
            received.append((time.monotonic(), chunk))
            yielded[len(received) - 1].set()
        await response.aclose()
    assert [chunk for _, chunk in received] == pieces
    assert "x-trailer" not in response.headers
    # Each chunk reached the caller within a few milliseconds of being written.
    assert all(0 <= at - sent < 0.05 for (at, _), sent in zip(received, sent_at, strict=True))
    # Read to the end: the connection went back to the pool, not closed.
    assert not up.left


async def test_close_delimited_body_ends_with_the_connection(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")
        await writer.drain()

    async with RawUpstream(respond) as up:
        first = await fetch(transport, up.url)
        second = await fetch(transport, up.url)
    assert first.content == second.content == b"until the end"
    assert up.connections == 2


async def test_informational_responses_are_skipped(transport):
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with RawUpstream(answer_each(answer)) as up:
        response = await fetch(transport, up.url)
    assert response.status_code == 200
    assert response.content == b"ok"
    assert "link" not in response.headers


async def test_head_204_and_304_have_no_body_and_keep_the_connection(transport):
    answers = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        OK,
    )
    async with RawUpstream(answer_each(*answers)) as up:
        head = await fetch(transport, up.url, "HEAD", b"")
        no_content = await fetch(transport, up.url, "GET", b"")
        not_modified = await fetch(transport, up.url, "GET", b"")
        last = await fetch(transport, up.url, "GET", b"")
    assert (head.status_code, head.headers["content-length"], head.content) == (200, "1000", b"")
    assert (no_content.status_code, no_content.content) == (204, b"")
    assert (not_modified.status_code, not_modified.content) == (304, b"")
    assert last.content == b"ok"
    assert up.connections == 1


async def test_bytes_after_the_response_retire_the_connection(transport):
    answer = OK + b"HTTP/1.1 500 Surprise\r\nContent-Length: 0\r\n\r\n"
    async with RawUpstream(answer_each(answer)) as up:
        first = await fetch(transport, up.url)
        second = await fetch(transport, up.url)
    assert (first.status_code, first.reason_phrase, first.content) == (200, "OK", b"ok")
    assert second.content == b"ok"
    assert up.connections == 2


async def test_a_transfer_coding_other_than_chunked_is_read_to_the_close(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity-ish\r\n\r\nto the close")

    async with RawUpstream(respond) as up:
        assert (await fetch(transport, up.url)).content == b"to the close"


# Keep-alive ---------------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(transport):
    async with RawUpstream(answer_each(OK)) as up:
        for _ in range(10):
            assert (await fetch(transport, up.url + "/v1/chat")).content == b"ok"
    assert up.connections == 1
    assert len(up.requests) == 10


async def test_connection_close_is_not_reused(transport):
    # The server keeps its end open: only the header tells the client not to reuse the connection.
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with RawUpstream(answer_each(answer)) as up:
        for _ in range(3):
            await fetch(transport, up.url)
        await asyncio.wait_for(up.client_left.wait(), 1.0)
    assert up.connections == 3


async def test_http10_response_without_keep_alive_is_not_reused(transport):
    async with RawUpstream(answer_each(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")) as up:
        first = await fetch(transport, up.url)
        await fetch(transport, up.url)
    assert first.http_version == "HTTP/1.0"
    assert up.connections == 2


async def test_a_pooled_connection_the_server_closed_is_not_reused(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(OK)
        await writer.drain()
        # An idle timeout on the server's side.

    async with RawUpstream(respond) as up:
        await fetch(transport, up.url)
        await asyncio.sleep(0.1)
        assert (await fetch(transport, up.url)).content == b"ok"
    assert up.connections == 2


async def test_a_post_racing_the_servers_idle_close_is_not_sent_again(transport):
    """The server reads the second request on the kept-alive connection and closes it without a word
    (its idle timeout won the race, or it crashed while acting on it): a POST may have been received, so
    it fails instead of going again (the relay fails over to another deployment)."""

    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(OK)
        await writer.drain()
        await upstream.request(reader)

    async with RawUpstream(respond) as up:
        await fetch(transport, up.url)
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, up.url, body=b'{"n": 2}')
    assert up.connections == 1
    assert [raw.endswith(b'{"n": 2}') for raw in up.requests] == [False, True]
    assert transport.busy == 0


async def test_a_get_racing_the_servers_idle_close_goes_again_on_a_fresh_connection(transport):
    """The same race for an idempotent request (the health probe's GET): sent once more, on a new connection."""

    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        if upstream.connections == 1:
            writer.write(OK)
            await writer.drain()
            await upstream.request(reader)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")

    async with RawUpstream(respond) as up:
        await fetch(transport, up.url, "GET", b"")
        second = await fetch(transport, up.url, "GET", b"")
    assert second.content == b"fresh"
    assert up.connections == 2
    assert len(up.requests) == 3


async def test_idle_connections_expire():
    transport = UpstreamTransport(max_connections=4, keepalive_expiry=0.2)
    try:
        async with RawUpstream(answer_each(OK)) as up:
            await fetch(transport, up.url)
            # The sweep closes the expired connection even though no request comes.
            await asyncio.wait_for(up.client_left.wait(), 1.0)
            await fetch(transport, up.url)
        assert up.connections == 2
    finally:
        await transport.aclose()


async def test_aclose_closes_the_pooled_connections():
    transport = UpstreamTransport(max_connections=4)
    async with RawUpstream(answer_each(OK)) as up:
        await fetch(transport, up.url)
        await transport.aclose()
        await asyncio.wait_for(up.client_left.wait(), 1.0)


# Failures -----------------------------------------------------------------------------------------


async def test_body_cut_short_is_remote_protocol_error(transport):
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwor",
    ):

        async def respond(reader, writer, upstream, answer=answer):
            await upstream.request(reader)
            writer.write(answer)
            await writer.drain()

        async with RawUpstream(respond) as up:
            response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
            received = b""
            with pytest.raises(httpx.RemoteProtocolError, match="before the end of the body"):
                async for chunk in response.aiter_bytes():
                    received += chunk
            await response.aclose()
        assert received in (b"only this", b"hellowor")
    assert transport.busy == 0


async def test_server_closing_without_an_answer_is_remote_protocol_error(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)

    async with RawUpstream(respond) as up:
        with pytest.raises(httpx.RemoteProtocolError, match="without a complete response"):
            await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
    # A fresh connection is not retried: the server may have acted on the request.
    assert up.connections == 1
    assert transport.busy == 0


async def test_server_closing_inside_the_head_is_remote_protocol_error(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with RawUpstream(respond) as up:
        with pytest.raises(httpx.RemoteProtocolError, match="without a complete response"):
            await transport.send("POST", up.url, [], b"{}", TIMEOUTS)


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["not-http", "two-lengths", "bad-chunk-size", "nul-in-header"],
)
async def test_malformed_response_is_remote_protocol_error(transport, answer):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(answer)
        await writer.drain()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        with pytest.raises(httpx.RemoteProtocolError, match="malformed response"):
            response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
            await response.aread()
        await asyncio.wait_for(up.client_left.wait(), 1.0)
    assert transport.busy == 0


async def test_connection_refused_is_connect_error(transport):
    with pytest.raises(httpx.ConnectError, match="cannot connect to http://127.0.0.1"):
        await transport.send("POST", f"http://127.0.0.1:{free_port()}/v1", [], b"{}", TIMEOUTS)
    assert transport.busy == 0


@contextlib.contextmanager
def port_that_never_accepts():
    """A listener that never accepts, its backlog full: the kernel drops the next SYN, so a connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        waiting = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                waiting.append(filler)
            yield port
        finally:
            for filler in waiting:
                filler.close()


async def test_connect_timeout_is_connect_timeout(transport):
    with port_that_never_accepts() as port:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await transport.send("GET", f"http://127.0.0.1:{port}/", [], b"", {**TIMEOUTS, "connect": 0.3})
    assert 0.25 < time.monotonic() - started < 1.0
    assert transport.busy == 0


async def test_no_answer_is_read_timeout_and_drops_the_connection(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await transport.send("POST", up.url, [], b"{}", {**TIMEOUTS, "read": 0.3})
        waited = time.monotonic() - started
        await asyncio.wait_for(up.client_left.wait(), 1.0)
    assert 0.25 < waited < 1.0
    assert transport.busy == 0


async def test_body_stalling_is_read_timeout(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst ")
        await writer.drain()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        response = await transport.send("POST", up.url, [], b"{}", {**TIMEOUTS, "read": 0.3})
        stream = response.aiter_bytes()
        assert await anext(stream) == b"first "
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await anext(stream)
        assert 0.25 < time.monotonic() - started < 1.0
        await asyncio.wait_for(up.client_left.wait(), 1.0)
        await response.aclose()
    assert transport.busy == 0


async def test_cancelled_stream_closes_the_socket_and_frees_the_slot(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        listening = asyncio.ensure_future(upstream.until_client_leaves(reader))
        while not listening.done():
            writer.write(b"6\r\ntoken \r\n")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with RawUpstream(respond) as up:
        first_chunk = asyncio.Event()

        async def consume():
            response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
            async for _ in response.aiter_bytes():
                first_chunk.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(first_chunk.wait(), 1.0)
        assert transport.busy == 1
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Nobody called aclose: the cancellation alone closed the socket and gave the slot back.
        assert transport.busy == 0
        await asyncio.wait_for(up.client_left.wait(), 1.0)
        assert up.left[0] - cancelled_at < 0.2


async def test_cancelled_while_waiting_for_the_head_closes_the_socket(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        task = asyncio.ensure_future(transport.send("POST", up.url, [], b"{}", TIMEOUTS))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.busy == 0
        await asyncio.wait_for(up.client_left.wait(), 1.0)


async def test_cancelled_while_connecting_frees_the_slot(transport):
    with port_that_never_accepts() as port:
        task = asyncio.ensure_future(transport.send("GET", f"http://127.0.0.1:{port}/", [], b"", TIMEOUTS))
        await asyncio.sleep(0.2)
        assert transport.busy == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.busy == 0


async def test_cancelled_while_sending_a_large_body_closes_the_socket(transport):
    cancelled = asyncio.Event()

    async def respond(reader, writer, upstream):
        # Reads nothing until the client has given up, so the request body fills the socket buffers.
        await cancelled.wait()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        body = b"x" * 50_000_000
        task = asyncio.ensure_future(transport.send("POST", up.url, [], body, {**TIMEOUTS, "write": 30.0}))
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.busy == 0
        cancelled.set()
        await asyncio.wait_for(up.client_left.wait(), 2.0)


async def test_a_body_the_server_does_not_read_is_write_timeout(transport):
    async def respond(reader, writer, upstream):
        await asyncio.sleep(3)

    async with RawUpstream(respond) as up:
        started = time.monotonic()
        with pytest.raises(httpx.WriteTimeout):
            await transport.send("POST", up.url, [], b"x" * 50_000_000, {"connect": 0.3, "write": 0.3, "read": 0.3})
        assert time.monotonic() - started < 2.0
    assert transport.busy == 0


async def test_closing_a_stream_early_closes_its_connection(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
        await writer.drain()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
        async for _ in response.aiter_bytes():
            break
        await response.aclose()
        await asyncio.wait_for(up.client_left.wait(), 1.0)
        assert transport.busy == 0


async def test_a_slow_reader_holds_the_upstream_back(transport):
    """Nobody reads the body: the client stops reading the socket instead of buffering the whole of it."""
    written = 0

    async def respond(reader, writer, upstream):
        nonlocal written
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200000000\r\n\r\n")
        piece = b"x" * 65536
        while written < 200_000_000:
            writer.write(piece)
            await writer.drain()
            written += len(piece)

    async with RawUpstream(respond) as up:
        response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
        await asyncio.sleep(0.5)
        held = written
        await asyncio.sleep(0.2)
        assert written == held  # the server is blocked
        assert held < 16_000_000  # socket buffers and the client's small read-ahead, not the body
        taken = 0
        stream = response.aiter_bytes()
        while taken < 5 * held:
            taken += len(await anext(stream))
        assert written > held  # reading again lets the server go on
        await response.aclose()
    assert transport.busy == 0


# TLS ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost and 127.0.0.1: (certificate PEM, key PEM)."""
    return self_signed_certificate()


@pytest.fixture
def server_tls(certificate, tmp_path) -> tuple[ssl.SSLContext, list[str | None]]:
    """The server's TLS context and the SNI names its handshakes saw."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate[0])
    key_path.write_bytes(certificate[1])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    return context, names


async def test_https_with_sni_and_keep_alive(certificate, server_tls):
    context, names = server_tls
    trusted = ssl.create_default_context(cadata=certificate[0].decode())
    transport = UpstreamTransport(max_connections=4, ssl_context=trusted)
    try:
        async with RawUpstream(answer_each(OK), tls=context) as up:
            url = f"https://localhost:{up.port}/v1/models"
            for _ in range(3):
                assert (await fetch(transport, url, "GET", b"")).content == b"ok"
        assert names == ["localhost"]
        assert up.connections == 1
        assert up.requests[0].startswith(f"GET /v1/models HTTP/1.1\r\nHost: localhost:{up.port}\r\n".encode())
    finally:
        await transport.aclose()


async def test_https_refuses_a_certificate_the_system_does_not_trust(server_tls, transport):
    context, _ = server_tls
    async with RawUpstream(answer_each(OK), tls=context) as up:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await transport.send("GET", up.url + "/", [], b"", TIMEOUTS)
    assert transport.busy == 0


# Headers ------------------------------------------------------------------------------------------


def head_fields(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(line.split(":", 1)[0], line.split(":", 1)[1].strip()) for line in head]


async def test_the_request_carries_what_was_asked_and_the_client_sets_the_framing(transport):
    async with RawUpstream(answer_each(OK)) as up:
        headers = [
            ("Host", "elsewhere.example"),
            ("Authorization", "Bearer sk-test"),
            ("X-Tag", "one"),
            ("Content-Length", "999"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
        ]
        await fetch(transport, up.url + "/v1/chat/completions?beta=true", body=b'{"a":1}', headers=headers)
        await fetch(transport, up.url + "/v1/models", "GET", b"", [("Accept", "application/json")])
    post, get = up.requests
    assert post.startswith(b"POST /v1/chat/completions?beta=true HTTP/1.1\r\n")
    assert post.endswith(b'\r\n\r\n{"a":1}')
    fields = dict((name.lower(), value) for name, value in head_fields(post))
    assert fields["host"] == f"127.0.0.1:{up.port}"
    assert fields["authorization"] == "Bearer sk-test" and fields["x-tag"] == "one"
    assert fields["content-length"] == "7"
    assert fields["accept-encoding"] == "identity"
    assert "transfer-encoding" not in fields and "user-agent" not in fields and "content-type" not in fields
    assert get.startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert ("Accept", "application/json") in head_fields(get)
    # One connection: the caller's "Connection: close" did not reach the wire.
    assert up.connections == 1


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(transport):
    async with RawUpstream(answer_each(OK)) as up:
        for headers in ([("X-Evil", "a\r\nX-Injected: 1")], [("X-Evil", "a\rb")], [("X-Evil\n", "a")]):
            with pytest.raises(httpx.LocalProtocolError):
                await transport.send("POST", up.url, headers, b"{}", TIMEOUTS)
        await asyncio.sleep(0.1)
    assert up.requests == []
    assert transport.busy == 0


async def test_large_and_repeated_response_headers_are_kept_in_order(transport):
    big = b"v" * 60_000
    repeated = [(b"Set-Cookie", b"a=1"), (b"X-Other", b"x"), (b"set-cookie", b"b=2"), (b"Set-Cookie", b"c=3")]
    many = [(b"X-H%d" % i, b"%d" % i) for i in range(100)]
    fields = [(b"X-Big", big), *repeated, *many, (b"Content-Length", b"2")]
    answer = b"HTTP/1.1 200 OK\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\nok"
    async with RawUpstream(answer_each(answer)) as up:
        response = await fetch(transport, up.url, headers=[("X-Big-Request", "r" * 50_000)])
    assert response.headers.raw == fields
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2", "c=3"]
    assert response.content == b"ok"
    assert b"X-Big-Request: " + b"r" * 50_000 in up.requests[0]
    # A header past 64 KiB is an upstream gone wrong.
    async with RawUpstream(answer_each(answer.replace(big, b"v" * 70_000))) as up:
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, up.url)
    assert transport.busy == 0


# Resolver -----------------------------------------------------------------------------------------


async def test_resolver_caches_answers_for_its_ttl():
    resolver = UpstreamResolver(ttl=60)
    first = await resolver.resolve("localhost", 443)
    assert first and all(address["port"] == 443 and address["hostname"] == "localhost" for address in first)
    assert await resolver.resolve("localhost", 443) is first
    expired = UpstreamResolver(ttl=0)
    assert await expired.resolve("localhost", 443) is not await expired.resolve("localhost", 443)


async def test_a_name_with_several_addresses_falls_through_to_the_one_that_answers(transport):
    """localhost may resolve to ::1 first; the server only listens on 127.0.0.1."""
    async with RawUpstream(answer_each(OK)) as up:
        response = await fetch(transport, f"http://localhost:{up.port}/")
    assert response.content == b"ok"


# Any split of the bytes ---------------------------------------------------------------------------


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = [], body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[:size], rest[size:]
        out.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
    if rest:
        out.append(b"%x\r\n%s\r\n" % (len(rest), rest))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(out) + b"0\r\nX-T: 1\r\n\r\n"


def content_length(body: bytes, _sizes: list[int]) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=3000),
    framing=st.sampled_from([chunked, content_length]),
    chunk_sizes=st.lists(st.integers(1, 700), max_size=8),
    cuts=st.lists(st.integers(1, 4000), max_size=8),
)
def test_any_split_of_the_wire_bytes_gives_the_same_body(body, framing, chunk_sizes, cuts):
    wire = framing(body, chunk_sizes)
    points = sorted({cut for cut in cuts if cut < len(wire)})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]

    async def respond(reader, writer, upstream):
        while await upstream.request(reader) is not None:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.001)

    async def run() -> list[bytes]:
        transport = UpstreamTransport(max_connections=2)
        try:
            async with RawUpstream(respond) as up:
                bodies = [(await fetch(transport, up.url)).content for _ in range(2)]
            assert up.connections == 1  # the framing was read exactly: the connection was reusable
            return bodies
        finally:
            await transport.aclose()

    assert asyncio.run(run()) == [body, body]


# Content codings ----------------------------------------------------------------------------------


def gzip_chunks(pieces: list[bytes]) -> list[bytes]:
    """One gzip stream, flushed after each piece (as a compressing proxy does for stream events)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH) for piece in pieces]
    out[-1] += compressor.flush()
    return out


async def test_a_compressed_stream_is_decoded_event_by_event_as_it_arrives(transport):
    """An upstream that ignores `accept-encoding: identity`: each flushed event is decoded and yielded as
    it arrives, and the response no longer claims an encoding or a length (httpx must not decode it again)."""
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    yielded = [asyncio.Event() for _ in pieces]

    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk, event in zip(gzip_chunks(pieces), yielded, strict=True):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.wait_for(event.wait(), 1.0)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
        assert "content-encoding" not in response.headers
        received = []
        async for chunk in response.aiter_bytes():
            received.append(chunk)
            yielded[len(received) - 1].set()
        await response.aclose()
    assert received == pieces
    assert up.requests[0].count(b"Accept-Encoding: identity") == 1


async def test_a_gzip_bomb_is_stopped_at_the_cap_without_being_inflated():
    """1 MB on the wire, 1 GiB decoded: the read stops at the cap, counted as it is decoded, and never
    holds more than a few pieces of the decoded body."""
    bomb = gzip_bomb()
    transport = UpstreamTransport(max_connections=2)

    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb))
        writer.write(bomb)
        await writer.drain()
        await upstream.until_client_leaves(reader)

    try:
        async with RawUpstream(respond) as up:
            response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
            tracemalloc.start()
            started = time.monotonic()
            try:
                with pytest.raises(UpstreamBodyTooLarge):
                    await upstream_body_read(response, limit=8 * 1024 * 1024)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert time.monotonic() - started < 5
            await asyncio.wait_for(up.client_left.wait(), 2.0)
        assert peak < 24 * 1024 * 1024, peak
        assert transport.busy == 0
    finally:
        await transport.aclose()


async def test_a_declared_length_past_the_cap_is_refused_before_reading(transport):
    async def respond(reader, writer, upstream):
        await upstream.request(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 65536)
        await writer.drain()
        await upstream.until_client_leaves(reader)

    async with RawUpstream(respond) as up:
        response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
        with pytest.raises(UpstreamBodyTooLarge, match="1000-byte limit"):
            await upstream_body_read(response, limit=1000)
        await asyncio.wait_for(up.client_left.wait(), 1.0)
    assert transport.busy == 0


@pytest.mark.parametrize("coding", ["compress", "gzip, gzip", "x-custom"])
async def test_a_coding_the_gateway_does_not_decode_is_refused(transport, coding):
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: 2\r\n\r\nok" % coding.encode()
    async with RawUpstream(answer_each(answer)) as up:
        with pytest.raises(httpx.RemoteProtocolError, match="does not decode"):
            await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
    assert transport.busy == 0


async def test_a_body_that_does_not_inflate_is_remote_protocol_error(transport):
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!"
    async with RawUpstream(answer_each(answer)) as up:
        response = await transport.send("POST", up.url, [], b"{}", TIMEOUTS)
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
        await response.aclose()
    assert transport.busy == 0
