"""An httpx transport backed by aiohttp's connection pool.

The relay keeps httpx's client API (one `httpx.AsyncClient` per provider, httpx exceptions,
`Response.aiter_bytes`), but the bytes move through aiohttp: its C HTTP parser and its pool cost
a fraction of httpcore's per request (httpcore checks every pooled connection for expiry on each
request, which dominated the relay's CPU profile under load).
"""

import asyncio
import time
from collections.abc import Callable

import aiohttp
import aiohttp.abc
import httpx

# aiohttp sets these itself from the URL and body.
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class PoolExhausted(httpx.PoolTimeout):
    """Every connection of the provider's pool stayed busy for the whole pool timeout.

    Not a connect timeout: the provider may be perfectly healthy, it is only at the capacity the
    gateway allows it."""

    def __init__(self, provider: str, busy: int, waited: float) -> None:
        super().__init__(f"provider {provider} is at capacity ({busy} connections busy, waited {waited:.1f}s)")
        self.provider = provider
        self.busy = busy
        self.waited = waited


class _Slot:
    """One connection slot of a transport's pool, given back exactly once."""

    __slots__ = ("_transport", "_held")

    def __init__(self, transport: "AiohttpTransport") -> None:
        self._transport = transport
        self._held = True
        transport.busy += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._transport.busy -= 1
            self._transport._pool.release()


class AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, slot: _Slot | None = None) -> None:
        self._response = response
        self._slot = slot

    async def __aiter__(self):
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "incomplete response body") from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        try:
            if self._response.content.at_eof():
                self._response.release()
            else:
                # Not read to the end (client gone, error): drop the connection so the upstream stops.
                self._response.close()
        finally:
            if self._slot is not None:
                self._slot.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """A pool of at most `max_connections` upstream connections.

    A request holds one slot from sending until its response is closed (a stream holds it for its
    whole length). Waiting for a slot is bounded by the request's `pool` timeout and fails with
    PoolExhausted; the `connect` timeout covers only opening a connection. `on_pool_wait(waited,
    exhausted)` hears of every request that had to wait."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 30.0,
        resolver: aiohttp.abc.AbstractResolver | None = None,
        name: str = "upstream",
        on_pool_wait: Callable[[float, bool], None] | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._resolver = resolver
        self._name = name
        self._on_pool_wait = on_pool_wait
        self._pool = asyncio.Semaphore(max_connections)
        # Connections in use right now.
        self.busy = 0
        self._session: aiohttp.ClientSession | None = None

    def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                # The slots above bound the connections; aiohttp's own limit would queue requests
                # under the connect timeout instead.
                limit=0,
                keepalive_timeout=self._keepalive_expiry,
                ttl_dns_cache=300,
                resolver=self._resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def _slot_acquire(self, timeout: float | None) -> _Slot:
        if not self._pool.locked():
            await self._pool.acquire()
            return _Slot(self)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._pool.acquire()
        except TimeoutError:
            waited = time.monotonic() - started
            if self._on_pool_wait is not None:
                self._on_pool_wait(waited, True)
            raise PoolExhausted(self._name, self.busy, waited) from None
        if self._on_pool_wait is not None:
            self._on_pool_wait(time.monotonic() - started, False)
        return _Slot(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower().decode("latin-1") not in _SKIP_HEADERS
        ]
        body = await request.aread()
        return await self.send(request.method, str(request.url), headers, body, request.extensions.get("timeout", {}))

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, timeouts: dict
    ) -> httpx.Response:
        """One request from plain values (the relay's path, without building an httpx.Request): the
        response with its body unread, as an httpx.Response streaming from this pool. `timeouts`: httpx's
        timeout extension (connect, read, pool)."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("connect"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        slot = await self._slot_acquire(timeouts.get("pool"))
        try:
            response = await self._session_get().request(
                method,
                url,
                headers=headers,
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
            )
        except BaseException as exc:
            slot.release()
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(exc)) from exc
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
            if isinstance(exc, TimeoutError):
                raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
            if isinstance(exc, aiohttp.ServerDisconnectedError):
                raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
            if isinstance(exc, aiohttp.ClientError):
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # aiohttp finishes a connect already under way and swallows a cancellation that came meanwhile
            # (the client left): honour it, or the request would run on for nobody.
            response.close()
            slot.release()
            raise asyncio.CancelledError
        return httpx.Response(
            status_code=response.status,
            headers=[(k, v) for k, v in response.raw_headers],
            stream=AiohttpStream(response, slot),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
