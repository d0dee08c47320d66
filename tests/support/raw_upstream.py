"""Raw loopback HTTP servers for tests of the upstream client: each connection is answered by a coroutine
that reads requests and writes exact bytes (well-formed, malformed, cut short, never), so the client's
handling of the wire is tested against what a hostile or broken upstream really sends."""

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable

Respond = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawUpstream"], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body) as raw bytes; None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


class RawUpstream:
    """A loopback server whose `respond(reader, writer, upstream)` answers each connection. It records
    the connections, the requests read through `request`, and when each connection saw the client leave."""

    def __init__(self, respond: Respond, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0):
        self._respond = respond
        self._tls = tls
        self.host = host
        self.connections = 0
        self.requests: list[bytes] = []
        self.left: list[float] = []
        self.client_left = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = port

    async def __aenter__(self) -> "RawUpstream":
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        raw = await read_request(reader)
        if raw is not None:
            self.requests.append(raw)
        return raw

    async def until_client_leaves(self, reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.left.append(time.monotonic())
        self.client_left.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._respond(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def answer_each(*responses: bytes) -> Respond:
    """Answer the requests of every connection with these bytes in turn (the last one repeats)."""

    async def respond(reader, writer, upstream: RawUpstream) -> None:
        index = 0
        while await upstream.request(reader) is not None:
            writer.write(responses[min(index, len(responses) - 1)])
            await writer.drain()
            index += 1
        upstream.left.append(time.monotonic())
        upstream.client_left.set()

    return respond


class RawUpstreamThread:
    """A RawUpstream on an event loop of its own in a thread, for synchronous tests (a gateway process
    reaches it over loopback): `with RawUpstreamThread(respond) as upstream: ... upstream.url`."""

    def __init__(self, respond: Respond, **options) -> None:
        self._respond = respond
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self.upstream: RawUpstream | None = None

    def __enter__(self) -> RawUpstream:
        import threading

        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def start() -> None:
            self.upstream = RawUpstream(self._respond, **self._options)
            await self.upstream.__aenter__()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the raw upstream did not start")
        return self.upstream

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            await self.upstream.__aexit__(None, None, None)
            # Their connections are aborted: the handlers end on their own, the stragglers are cancelled.
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            if handlers:
                _, pending = await asyncio.wait(handlers, timeout=2)
                for task in pending:
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
