"""A hostile provider for end-to-end tests: a loopback HTTP/1.1 server that answers each request with
what the test scripted for its upstream model - odd JSON values, error bodies echoing the request's
credentials, SSE events, or a drip of single bytes that never completes anything.

It runs its own event loop in a thread of the test process, so the gateway under test (a subprocess)
reaches it over real TCP. It records each request (method, target, headers, body) and the moment the
client closed the connection, which is how a test sees that the gateway let go of the upstream.
"""

import asyncio
import threading
import time
from dataclasses import dataclass, field

import orjson


@dataclass
class Reply:
    """A complete answer: status, JSON (or raw bytes) body."""

    status: int = 200
    body: object = None
    raw: bytes | None = None
    # Echo the request's headers into the JSON body's error message (a provider that quotes what it got).
    echo_headers: bool = False

    def payload(self, request: "Seen") -> bytes:
        if self.raw is not None:
            return self.raw
        body = self.body
        if self.echo_headers:
            sent = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
            body = {"error": {"message": f"bad request, headers were {sent}", "type": "invalid_request_error"}}
            body["type"] = "error"
        return orjson.dumps(body)


@dataclass
class Events:
    """An SSE answer: each item is written as it is (one chunk each), then the stream ends."""

    chunks: list[bytes] = field(default_factory=list)
    # Echo the request's headers into one more event: an error event quoting them.
    echo_headers_event: str | None = None


@dataclass
class Drip:
    """Headers, `head` at once, then one byte of `byte` every `interval` seconds until the client leaves
    (or `limit` seconds pass): a body or an SSE event that never completes."""

    stream: bool = True
    head: bytes = b""
    byte: bytes = b" "
    interval: float = 0.5
    limit: float = 60.0


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    model: str | None
    started: float
    left: float | None = None  # when the client closed the connection

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


class HostileUpstream:
    """Scripted answers by upstream model: `script[model] = Reply(...) | Events(...) | Drip(...)`."""

    def __init__(self) -> None:
        self.script: dict[str, Reply | Events | Drip] = {}
        self.requests: list[Seen] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HostileUpstream":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hostile upstream did not start")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            # Aborted, each connection's reads end and its task returns by itself.
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def seen(self, model: str) -> list[Seen]:
        return [request for request in self.requests if request.model == model]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()
        self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                request = await self._read(reader)
                if request is None:
                    return
                self.requests.append(request)
                answer = self.script.get(request.model or "", Reply(404, {"error": {"message": "unknown model"}}))
                keep = await self._answer(answer, request, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Seen | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        try:
            model = orjson.loads(body).get("model") if body else None
        except (orjson.JSONDecodeError, AttributeError):
            model = None
        return Seen(method, target, headers, body, model if isinstance(model, str) else None, time.monotonic())

    async def _answer(self, answer, request: Seen, reader, writer) -> bool:
        if isinstance(answer, Reply):
            payload = answer.payload(request)
            writer.write(
                f"HTTP/1.1 {answer.status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            return True
        content_type = b"text/event-stream" if not isinstance(answer, Drip) or answer.stream else b"application/json"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ntransfer-encoding: chunked\r\n\r\n")
        if isinstance(answer, Events):
            chunks = list(answer.chunks)
            if answer.echo_headers_event is not None:
                sent = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
                chunks.append(answer.echo_headers_event.replace("{headers}", sent).encode())
            for chunk in chunks:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        return await self._drip(answer, request, reader, writer)

    @staticmethod
    async def _drip(answer: Drip, request: Seen, reader, writer) -> bool:
        if answer.head:
            writer.write(b"%x\r\n%s\r\n" % (len(answer.head), answer.head))
        await writer.drain()
        gone = asyncio.ensure_future(reader.read(1))
        deadline = time.monotonic() + answer.limit
        try:
            while time.monotonic() < deadline:
                done, _ = await asyncio.wait((gone,), timeout=answer.interval)
                if done:
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(answer.byte), answer.byte))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if not gone.done():
                gone.cancel()
            elif not gone.cancelled():
                gone.exception()  # a reset is a way of leaving too
        request.left = time.monotonic()
        return False
