"""The httpx transport of the upstream clients: httpx's API (one `httpx.AsyncClient` per provider,
httpx exceptions, `Response.aiter_bytes`) over the gateway's own HTTP/1.1 client (providers.http1),
with a bounded number of connections per provider.
"""

import asyncio
import ssl
import time
from collections.abc import Callable

import httpx

from providers.http1 import CLIENT_SET_HEADERS, Http1Pool, Http1Response, Resolver

__all__ = ["CLIENT_SET_HEADERS", "PoolExhausted", "UpstreamResponseStream", "UpstreamTransport"]


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

    def __init__(self, transport: "UpstreamTransport") -> None:
        self._transport = transport
        self._held = True
        transport.busy += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._transport.busy -= 1
            self._transport._pool.release()


class UpstreamResponseStream(httpx.AsyncByteStream):
    """A response body, yielded as it arrives (stream events are never held back), holding its
    connection slot until closed."""

    __slots__ = ("_response", "_slot")

    def __init__(self, response: Http1Response, slot: _Slot | None = None) -> None:
        self._response = response
        self._slot = slot

    async def __aiter__(self):
        read = self._response.read
        try:
            while chunk := await read():
                yield chunk
        except BaseException:
            # Failed or cancelled (the client left): the connection is gone, give its slot back now.
            await self.aclose()
            raise

    async def aclose(self) -> None:
        # Not read to the end (client gone, error): the response drops the connection so the upstream stops.
        self._response.close()
        if self._slot is not None:
            self._slot.release()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """A pool of at most `max_connections` upstream connections.

    A request holds one slot from sending until its response is closed (a stream holds it for its
    whole length). Waiting for a slot is bounded by the request's `pool` timeout and fails with
    PoolExhausted; the `connect` timeout covers only opening a connection. `on_pool_wait(waited,
    exhausted)` hears of every request that had to wait. `ssl_context` replaces the system's trust
    store (tests trust their own certificate with it)."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 30.0,
        resolver: Resolver | None = None,
        name: str = "upstream",
        on_pool_wait: Callable[[float, bool], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._name = name
        self._on_pool_wait = on_pool_wait
        self._pool = asyncio.Semaphore(max_connections)
        # Connections in use right now.
        self.busy = 0
        self._connections = Http1Pool(keepalive_expiry=keepalive_expiry, resolver=resolver, ssl_context=ssl_context)

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
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw]
        body = await request.aread()
        return await self.send(request.method, str(request.url), headers, body, request.extensions.get("timeout", {}))

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, timeouts: dict
    ) -> httpx.Response:
        """One request from plain values (the relay's path, without building an httpx.Request): the
        response with its body unread, as an httpx.Response streaming from this pool. `timeouts`: httpx's
        timeout extension (connect, read, write, pool)."""
        slot = await self._slot_acquire(timeouts.get("pool"))
        try:
            response = await self._connections.request(
                method,
                url,
                headers,
                body,
                connect_timeout=timeouts.get("connect"),
                read_timeout=timeouts.get("read"),
                write_timeout=timeouts.get("write"),
            )
        except BaseException:
            slot.release()
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # A cancellation (the client left) that came while the response head was being read, swallowed
            # on the way: honour it, or the request would run on for nobody.
            response.close()
            slot.release()
            raise asyncio.CancelledError
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=UpstreamResponseStream(response, slot),
            extensions={"http_version": response.http_version, "reason_phrase": response.reason},
        )

    async def aclose(self) -> None:
        await self._connections.aclose()
