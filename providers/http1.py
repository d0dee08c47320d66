"""The HTTP/1.1 client that carries every upstream request: per-origin pools of keep-alive asyncio
connections, responses parsed by httptools (llhttp), failures raised as httpx's exceptions. It does
only what the relay needs (no redirects, cookies, proxies or decompression), so a warm request costs
little more than one socket write and one parser call per read.
"""

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import httptools
import httpx

# Headers the client writes itself, from the URL and the body; a caller's copies are dropped.
CLIENT_SET_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Methods whose empty body is still announced (`Content-Length: 0`), as httpx does.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Buffered, unread body bytes at which the socket stops being read, so a slow client holds the
# upstream back instead of filling memory.
READ_HIGH_WATER = 256 * 1024
# A response head larger than this is an upstream gone wrong, not a response.
MAX_HEAD_BYTES = 1024 * 1024
_HTTP_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class _StaleConnection(httpx.RemoteProtocolError):
    """A reused keep-alive connection that the server had closed: nothing was received, so the
    request can go again on a fresh connection."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL as the client uses it, parsed once per distinct URL."""

    origin: str
    tls: bool
    host: str
    port: int
    request_target: str
    authority: str


@lru_cache(maxsize=1024)
def target_parse(url: str) -> Target:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(f"invalid upstream URL {url!r}: {exc}") from None
    scheme = parsed.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"upstream URL {url!r} must use http or https")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise httpx.UnsupportedProtocol(f"upstream URL {url!r} has no host")
    port = parsed.port or (443 if scheme == "https" else 80)
    bracketed = f"[{host}]" if ":" in host else host
    authority = bracketed if parsed.port is None else f"{bracketed}:{port}"
    return Target(
        origin=f"{scheme}://{bracketed}:{port}",
        tls=scheme == "https",
        host=host,
        port=port,
        request_target=parsed.raw_path.decode("ascii"),
        authority=authority,
    )


def request_head(method: str, target: Target, headers: Iterable[tuple[str, str]], body_length: int) -> bytes:
    """The request line and headers, ending in the blank line. Host and Content-Length come from the
    URL and the body; a header name or value with a line break is refused (it would split the head)."""
    lines = [f"{method} {target.request_target} HTTP/1.1\r\nHost: {target.authority}\r\n"]
    for name, value in headers:
        if name.lower() not in CLIENT_SET_HEADERS:
            lines.append(f"{name}: {value}\r\n")
    if body_length or method in _BODY_METHODS:
        lines.append(f"Content-Length: {body_length}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # One line break per line, request line included: any other came from a name, value or target.
    if head.count("\n") != len(lines) + 1 or head.count("\r") != len(lines) + 1:
        raise httpx.LocalProtocolError(f"request to {target.origin} has a line break in a header or its target")
    try:
        return head.encode("latin-1")
    except UnicodeEncodeError:
        return head.encode("utf-8")


class Resolver:
    """Host names to connectable addresses through the loop's getaddrinfo, each answer kept for `ttl`
    seconds so new connections do not wait on DNS; literal addresses are returned as they are.
    An address is a dict: hostname (as asked), host (numeric), port, family, proto, flags."""

    def __init__(self, *, ttl: float = 60.0) -> None:
        self._ttl = ttl
        self._answers: dict[tuple[str, int, int], tuple[float, list[dict]]] = {}
        self._lookups: dict[tuple[str, int, int], asyncio.Task] = {}

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[dict]:
        literal = _literal_address(host)
        if literal is not None:
            literal_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [_address(host, host, port, literal_family, 0)]
        key = (host, port, int(family))
        cached = self._answers.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        lookup = self._lookups.get(key)
        if lookup is None:
            # Requests opening connections to one host at once share one lookup.
            lookup = asyncio.get_running_loop().create_task(self._lookup(host, port, family))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        return await asyncio.shield(lookup)

    async def _lookup(self, host: str, port: int, family: socket.AddressFamily) -> list[dict]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        results: list[dict] = []
        seen = set()
        for info_family, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            if info_family == socket.AF_INET6 and sockaddr[3]:
                address = f"{address}%{sockaddr[3]}"
            if address not in seen:
                seen.add(address)
                results.append(_address(host, address, int(sockaddr[1]), info_family, proto))
        if len(self._answers) > 1024:
            self._answers.clear()
        self._answers[(host, port, int(family))] = (time.monotonic() + self._ttl, results)
        return results


def _address(hostname: str, host: str, port: int, family: int, proto: int) -> dict:
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    return {"hostname": hostname, "host": host, "port": port, "family": family, "proto": proto, "flags": flags}


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


@lru_cache(maxsize=1)
def default_ssl_context() -> ssl.SSLContext:
    """The system's trust store, certificate and host name checks on, HTTP/1.1 offered by ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _expire(
    waiter: asyncio.Future, error: type[httpx.TimeoutException], message: str, origin: str, timeout: float
) -> None:
    if not waiter.done():
        waiter.set_exception(error(message.format(origin=origin, timeout=timeout)))


class Http1Connection(asyncio.Protocol):
    """One keep-alive connection and the response it is reading. Body bytes wait in a list until the
    reader takes them all at once; reading the socket pauses while too many wait."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        # Set once the socket is closing or closed: the connection can serve nothing more.
        self.closed = False
        self.served = 0
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future | None = None
        self.write_paused = False
        self._read_paused = False
        # The exchange in progress; no parser while the connection is idle.
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self._received = 0
        self._informational = False
        self._head_done = False
        self._done = False
        self._length = False
        # None: no Transfer-Encoding; else whether chunked is its last coding.
        self._chunked: bool | None = None
        self._keep_alive = False
        self._error: Exception | None = None
        self.status = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # An idle connection is owed nothing (a server may send a 408 before it closes).
            self.abort()
            return
        self._received += len(data)
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self._done and self._error is None:
                error = httpx.RemoteProtocolError(f"malformed response from {self.origin}: {exc}")
                error.__cause__ = exc
                self._error = error
            self._keep_alive = False
            self.abort()
        else:
            if not self._head_done and self._received > MAX_HEAD_BYTES and self._error is None:
                self._error = httpx.RemoteProtocolError(
                    f"response head from {self.origin} is over {MAX_HEAD_BYTES} bytes"
                )
                self.abort()
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self._done and self._error is None:
            if self._head_done and not self._framed() and exc is None:
                # A body without Content-Length or chunked framing ends with the connection.
                self._done = True
                self._keep_alive = False
            else:
                self._error = self._lost_error(exc)
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._head_done:
            # A second message after the response: the connection's framing cannot be trusted any more.
            self._keep_alive = False
            return
        self.headers = []
        self.reason = b""
        self._length = False
        self._chunked = None

    def on_status(self, reason: bytes) -> None:
        if not self._head_done:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # trailers of a chunked body, or a message after the response
        if b"\x00" in value:
            raise ValueError(f"NUL byte in response header {name!r}")
        self.headers.append((name, value))
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            self._length = True
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    def on_headers_complete(self) -> None:
        if self._head_done:
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ValueError("the upstream switched protocols unasked")
            # An informational response (100 Continue, 103 Early Hints) comes before the real one.
            self._informational = True
            return
        self.status = status
        self._head_done = True
        self._keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        self.http_version = _HTTP_VERSIONS.get(version) or f"HTTP/{version}".encode()
        if self._head_request or status == 204 or status == 304:
            # No body, whatever the framing headers announce.
            self._done = True

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        else:
            self._done = True

    # The exchange

    def exchange_start(self, head: bytes, body: bytes, head_request: bool) -> None:
        """Write one request; reset the response state."""
        parser = httptools.HttpResponseParser(self)
        # What aiohttp accepted from upstreams: lax header values and line ends, spaces after a chunk size.
        parser.set_dangerous_leniencies(
            lenient_headers=True, lenient_optional_cr_before_lf=True, lenient_spaces_after_chunk_size=True
        )
        self._parser = parser
        self._head_request = head_request
        self._received = 0
        self._informational = False
        self._head_done = False
        self._done = False
        self._length = False
        self._chunked = None
        self._keep_alive = False
        self._error = None
        self.status = 0
        self.headers = []
        self._chunks = []
        self._buffered = 0
        if self.closed or self.transport.is_closing():
            self._error = self._lost_error(None)
            return
        if len(body) <= 65536:
            self.transport.write(head + body if body else head)
        else:
            self.transport.write(head)
            self.transport.write(body)

    async def request_sent(self, timeout: float | None) -> None:
        """Wait while the request is still too large to fit in the socket's buffers."""
        while self.write_paused and not self._head_done and self._error is None:
            await self._wait(timeout, httpx.WriteTimeout, "sending the request to {origin} took over {timeout}s")

    async def head_received(self, timeout: float | None) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(timeout, httpx.ReadTimeout, "no response from {origin} within {timeout}s")

    async def body_read(self, timeout: float | None) -> bytes:
        """The body bytes that arrived since the last call, waiting for some if none did; b"" at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                self._chunks = []
                self._buffered = 0
                if self._read_paused:
                    self._read_paused = False
                    self.transport.resume_reading()
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(timeout, httpx.ReadTimeout, "the response from {origin} stalled for {timeout}s")

    def _framed(self) -> bool:
        """The body's end is announced (by its length or the last chunk), not marked by the connection closing."""
        return self._chunked if self._chunked is not None else self._length

    def reusable(self) -> bool:
        """The response was read to its end, the server keeps the connection open, and nothing of the
        request is still unsent."""
        return (
            self._done
            and self._keep_alive
            and self._error is None
            and not self.closed
            and not self.transport.is_closing()
            and not self.transport.get_write_buffer_size()
        )

    def idle(self) -> None:
        self._parser = None
        self._chunks = []
        if self._read_paused:
            # An idle connection is read so that the server closing it is seen.
            self._read_paused = False
            self.transport.resume_reading()
        self.served += 1
        self.idle_since = time.monotonic()

    def abort(self) -> None:
        """Close the socket now, unsent data and all: the upstream sees the client leave at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _lost_error(self, exc: Exception | None) -> Exception:
        if not self._received:
            if self.served:
                error: Exception = _StaleConnection(f"{self.origin} closed the idle connection")
            else:
                error = httpx.RemoteProtocolError(f"{self.origin} closed the connection without a response")
        elif not self._head_done:
            error = httpx.RemoteProtocolError(f"{self.origin} closed the connection before a complete response head")
        elif exc is None or isinstance(exc, ConnectionError):
            error = httpx.RemoteProtocolError(f"{self.origin} closed the connection before the end of the body")
        else:
            error = httpx.ReadError(f"reading from {self.origin} failed: {exc}")
        error.__cause__ = exc
        return error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None, error: type[httpx.TimeoutException], message: str) -> None:
        """Until the protocol has news (data, end, failure, writable again), or `error` after `timeout`
        seconds; `message` is formatted with origin and timeout only then."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, _expire, waiter, error, message, self.origin, timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


class Http1Response:
    """A response whose head has arrived; the body is read with `read` and the connection given back
    (or closed) with `close`."""

    __slots__ = ("status", "reason", "http_version", "headers", "_connection", "_pool", "_read_timeout")

    def __init__(self, connection: Http1Connection, pool: "Http1Pool", read_timeout: float | None) -> None:
        self.status = connection.status
        self.reason = connection.reason
        self.http_version = connection.http_version
        self.headers = connection.headers
        self._connection = connection
        self._pool = pool
        self._read_timeout = read_timeout

    async def read(self) -> bytes:
        """The next body bytes as they arrive, b"" after the last. A failed or cancelled read drops the
        connection."""
        connection = self._connection
        if connection is None:
            return b""
        try:
            return await connection.body_read(self._read_timeout)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give the connection back if its response ended cleanly; otherwise close it."""
        connection = self._connection
        if connection is not None:
            self._connection = None
            self._pool.connection_return(connection)


class Http1Pool:
    """Keep-alive connections per origin (scheme, host, port). A connection is reused only after its
    response ended cleanly and the server did not ask to close it; one idle for `keepalive_expiry`
    seconds is closed. The pool does not bound the number of connections: its caller does."""

    def __init__(
        self,
        *,
        keepalive_expiry: float = 30.0,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._keepalive_expiry = keepalive_expiry
        self._resolver = resolver if resolver is not None else Resolver()
        self._ssl_context = ssl_context
        # Most recently used last: the warm connections are reused, the cold ones expire.
        self._idle: dict[str, list[Http1Connection]] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
    ) -> Http1Response:
        """Send one request and wait for its response head. A reused connection that turns out to have
        been closed by the server (nothing received) is replaced by a fresh one, once."""
        target = target_parse(url)
        head = request_head(method, target, headers, len(body))
        connection = self._idle_take(target.origin)
        if connection is None:
            connection = await self._connect(target, connect_timeout)
        try:
            while True:
                connection.exchange_start(head, body, method == "HEAD")
                try:
                    if connection.write_paused:
                        await connection.request_sent(write_timeout)
                    await connection.head_received(read_timeout)
                    return Http1Response(connection, self, read_timeout)
                except _StaleConnection:
                    connection.abort()
                    connection = await self._connect(target, connect_timeout)
        except BaseException:
            connection.abort()
            raise

    def connection_return(self, connection: Http1Connection) -> None:
        if self._closed or not connection.reusable():
            connection.abort()
            return
        connection.idle()
        self._idle.setdefault(connection.origin, []).append(connection)
        if self._sweep_timer is None:
            self._sweep_timer = asyncio.get_running_loop().call_later(self._keepalive_expiry, self._sweep)

    async def aclose(self) -> None:
        """Close the idle connections; connections in use close when their responses do."""
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _idle_take(self, origin: str) -> Http1Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_allowed = time.monotonic() - self._keepalive_expiry
        while idle:
            connection = idle.pop()
            if connection.closed or connection.transport.is_closing():
                continue
            if connection.idle_since < oldest_allowed:
                connection.close()
                continue
            return connection
        return None

    def _sweep(self) -> None:
        self._sweep_timer = None
        oldest_allowed = time.monotonic() - self._keepalive_expiry
        next_expiry = None
        for origin in list(self._idle):
            kept = []
            for connection in self._idle[origin]:
                if connection.closed or connection.idle_since < oldest_allowed:
                    connection.close()
                else:
                    kept.append(connection)
            if kept:
                self._idle[origin] = kept
                first = kept[0].idle_since
                next_expiry = first if next_expiry is None else min(next_expiry, first)
            else:
                del self._idle[origin]
        if next_expiry is not None:
            delay = max(next_expiry + self._keepalive_expiry - time.monotonic(), 0.0) + 0.01
            self._sweep_timer = asyncio.get_running_loop().call_later(delay, self._sweep)

    async def _connect(self, target: Target, timeout: float | None) -> Http1Connection:
        loop = asyncio.get_running_loop()
        ssl_context = (self._ssl_context or default_ssl_context()) if target.tls else None
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
                failure: OSError | None = None
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            lambda: Http1Connection(target.origin),
                            address["host"],
                            address["port"],
                            family=address["family"],
                            ssl=ssl_context,
                            server_hostname=target.host if ssl_context is not None else None,
                        )
                    except TimeoutError:
                        raise
                    except OSError as exc:
                        failure = exc
                    else:
                        return connection
                raise failure or OSError(f"{target.host} resolved to no address")
        except TimeoutError as exc:
            # Python's TimeoutError is an OSError: it is also what a connect(2) timing out raises.
            raise httpx.ConnectTimeout(f"connecting to {target.origin} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {target.origin}: {exc}") from exc
