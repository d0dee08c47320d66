"""The production HTTP server settings: read timeouts that stop half-open client connections from piling up,
and a cap on the size of a request's headers.

uvicorn closes idle keep-alive connections, but a client that opens a connection and then sends part of a
request line, headers without their closing blank line, or a body shorter than its Content-Length, keeps
that connection (and, for a body, a task) forever. Two timers fix that, each armed once per request:

- `GatewayHttpProtocol` (uvicorn: `--http aigateway.server:GatewayHttpProtocol`) answers 408 and closes a
  connection whose request headers are not complete GATEWAY_HEADER_TIMEOUT_SECONDS after the connection
  opened or the request's first byte arrived.
- `BodyReadTimeout` (ASGI middleware; the protocol above applies it, and `aigateway.server:application` is
  the ASGI app with it for other servers that hand an incomplete body to the application) answers 408 in
  the client's dialect when the request body is not complete GATEWAY_BODY_TIMEOUT_SECONDS after the
  application started reading it.

The HTTP parser (httptools) keeps a header's name and value in memory until the header is complete, with no
limit: one 60 MB header held 60 MB. `GatewayHttpProtocol` counts the bytes of each request's head (request
line and headers) as they arrive and feeds the parser at most GATEWAY_MAX_HEADER_BYTES of them: a head
that is not complete within that many bytes gets a 431 (JSON in the dialect of the path) and the connection
closes. What the client still sends is read and dropped for at most LINGER_SECONDS (a client that is
still writing when the connection closes would get a reset instead of the answer), never kept.

`run_gateway` (manage.py) starts uvicorn with these and with a graceful-shutdown wait longer than
GATEWAY_SHUTDOWN_GRACE_SECONDS. daphne calls the application only once a body is complete, and closes a
connection only after Twisted's 60 s without a byte; its `--http-timeout` bounds the whole request, long
streams included (docs/infrastructure.md).
"""

import asyncio
import logging
import math

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from aigateway.websocket_protocol import GatewayWebSocketProtocol

logger = logging.getLogger(__name__)

# Seconds uvicorn's graceful-shutdown wait exceeds the grace period, so streams ended at the deadline can
# still send their error event and close before the server cancels what is left.
SHUTDOWN_MARGIN_SECONDS = 5.0

# How long a connection refused for its headers' size reads (and drops) what the client is still sending
# before it closes, so the client reads the 431 instead of a connection reset.
LINGER_SECONDS = 5.0

_HEADER_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 36\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"request headers not received in time"
)


def _error_json(path: str, status: int, code: str, message: str) -> bytes:
    """An error body in the dialect of the path family (`/v1/messages*` Anthropic, the rest OpenAI)."""
    import orjson

    from aigateway.errors import GatewayError
    from providers.dialects.anthropic import anthropic
    from providers.dialects.openai import openai

    dialect = anthropic if path.startswith("/v1/messages") else openai
    return orjson.dumps(dialect.error_body(GatewayError(status, code, message)))


def _body_timeout_response(path: str) -> bytes:
    return _error_json(path, 408, "request_timeout", "the request body was not received in time")


def _headers_too_large_response(path: str, limit: int, default_headers) -> bytes:
    """The whole 431 answer: status line, headers (uvicorn's own first) and a JSON body."""
    body = _error_json(
        path,
        431,
        "request_headers_too_large",
        f"the request line and headers exceed the limit of {limit} bytes (GATEWAY_MAX_HEADER_BYTES)",
    )
    lines = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


class _BodyWatch:
    """One request's body deadline: a single timer, cancelled as soon as the body is complete."""

    __slots__ = ("path", "_receive", "_send", "complete", "expired", "answered", "waiter", "timer")

    def __init__(self, scope, receive, send, timeout: float) -> None:
        self.path = scope.get("path", "")
        self._receive = receive
        self._send = send
        self.complete = False
        self.expired = False
        self.answered = False
        self.waiter: asyncio.Task | None = None
        self.timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.complete:
            return
        self.expired = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()

    def _done(self) -> None:
        self.complete = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def receive(self):
        if self.complete:
            return await self._receive()
        if self.expired:
            return await self._answer()
        self.waiter = task = asyncio.current_task()
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            # Our timer's cancellation only: any other one (client gone, server stopping) goes on.
            if self.expired and task is not None and task.uncancel() == 0:
                return await self._answer()
            raise
        finally:
            self.waiter = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done()
        return message

    async def _answer(self):
        """Send the 408 once; the application then sees the client as gone (Django aborts the request)."""
        if not self.answered:
            self.answered = True
            body = _body_timeout_response(self.path)
            logger.info("request body not complete in time on %s: answered 408", self.path)
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await self._send({"type": "http.response.body", "body": body})
        return {"type": "http.disconnect"}


class BodyReadTimeout:
    """ASGI middleware: a request body not complete within `timeout` seconds gets a 408 (JSON).

    Only the body phase is timed; the response (a stream of any length) is not. `send` is passed through
    untouched, so streamed chunks cost nothing extra. The application must not send a response of its
    own after it was told the client is gone (Django's handler does not).
    """

    def __init__(self, app, timeout: float | None = None) -> None:
        self.app = app
        self._timeout = timeout

    @property
    def timeout(self) -> float:
        if self._timeout is None:
            from django.conf import settings

            self._timeout = float(settings.GATEWAY_BODY_TIMEOUT_SECONDS)
        return self._timeout

    async def __call__(self, scope, receive, send):
        timeout = self.timeout
        if scope["type"] != "http" or timeout <= 0:
            return await self.app(scope, receive, send)
        watch = _BodyWatch(scope, receive, send, timeout)
        try:
            return await self.app(scope, watch.receive, send)
        finally:
            watch._done()


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-header deadline, a cap on the request head's size and
    the body timeout applied."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        from django.conf import settings

        app = getattr(config, "_gateway_timed_app", None)
        if app is None:
            app = config._gateway_timed_app = BodyReadTimeout(config.loaded_app)
        self.app = app
        self.header_timeout = float(settings.GATEWAY_HEADER_TIMEOUT_SECONDS)
        self.header_timer: asyncio.TimerHandle | None = None
        if self.ws_protocol_class is WebSocketsSansIOProtocol:  # uvicorn's choice when --ws is not given
            self.ws_protocol_class = GatewayWebSocketProtocol
        self.head_limit = int(settings.GATEWAY_MAX_HEADER_BYTES)
        # Bytes of the current request head fed to the parser; None while a body (or nothing) is expected.
        # A head starts with the connection and after each complete request.
        self.head_bytes: int | None = 0
        # After a 431: what the client still sends is dropped until the connection closes.
        self.dropping = False
        self.linger_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            return
        if self.head_bytes is None or self.head_limit <= 0:
            super().data_received(data)
            return
        allowance = self.head_limit - self.head_bytes
        if len(data) <= allowance:
            self.head_bytes += len(data)
            super().data_received(data)
            return
        # More bytes than the head may still take: the parser gets only those (it keeps an incomplete
        # header whole, however long). The rest is fed only if the head was complete within them.
        view = memoryview(data)
        self.head_bytes += allowance
        if allowance:
            super().data_received(view[:allowance])
        if self.transport.is_closing() or self.dropping:
            return
        if self.head_bytes is not None:
            self._head_too_large()
            return
        self.data_received(view[allowance:])

    def _head_too_large(self) -> None:
        self.dropping = True
        self._header_timer_stop()
        if self.cycle is not None and not self.cycle.response_complete:
            # Behind a response still being sent (pipelining): no answer can go out of order. The
            # connection closes once that response is complete; nothing more is read until then.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        # The request target as far as it arrived (uvicorn collects it from the first byte of a request).
        path = (getattr(self, "url", None) or b"").decode("latin-1")
        logger.info("request head over %d bytes on %s: answered 431", self.head_limit, path[:200])
        self.transport.write(_headers_too_large_response(path, self.head_limit, self.server_state.default_headers))
        if self.transport.can_write_eof():
            # The client sees the answer end; its remaining bytes are read and dropped until it closes too.
            self.transport.write_eof()
            self.flow.resume_reading()
            self.linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _header_timer_start(self) -> None:
        if self.header_timer is None and self.header_timeout > 0:
            self.header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

    def _header_timer_stop(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout_expired(self) -> None:
        self.header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind a response still streaming: that response bounds it.
            self._header_timer_start()
            return
        self.transport.write(_HEADER_TIMEOUT_RESPONSE)
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte is timed too.
        self._header_timer_start()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_timer_start()

    def on_headers_complete(self) -> None:
        self._header_timer_stop()
        self.head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next bytes are the next request's head. Those of them that arrived in the same read as the end
        # of this request are not counted: at most one read more than the limit.
        self.head_bytes = 0

    def connection_lost(self, exc) -> None:
        self._header_timer_stop()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        super().connection_lost(exc)


def uvicorn_options(settings) -> dict:
    """uvicorn.Config keyword arguments for production (the CLI spells them in the Procfile)."""
    return {
        "http": GatewayHttpProtocol,
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,
        "timeout_graceful_shutdown": math.ceil(settings.GATEWAY_SHUTDOWN_GRACE_SECONDS + SHUTDOWN_MARGIN_SECONDS),
        # The client's address and scheme from X-Forwarded-For / X-Forwarded-Proto, from these peers only.
        "proxy_headers": True,
        "forwarded_allow_ips": ",".join(settings.FORWARDED_ALLOW_IPS),
    }


def __getattr__(name: str):
    # The ASGI app with the body timeout, for servers other than uvicorn-with-the-protocol-above. Built on
    # first access, so importing the protocol class (uvicorn does that before it loads the app) does not
    # set Django up.
    if name == "application":
        from aigateway.asgi import application as gateway_application

        app = BodyReadTimeout(gateway_application)
        globals()["application"] = app
        return app
    raise AttributeError(name)
