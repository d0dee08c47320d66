"""The ASGI entry of the API paths (/v1/..., /health, /ready, /metrics): the API views run on a lean
request built straight from the ASGI scope, and their responses go straight out as ASGI messages.

Django's own handler builds an `ASGIRequest` (the whole META dict, a spooled body file, lazy GET/POST
parsing), resolves the URL, wraps the view in its exception conversion and runs it in a second task
beside a disconnect listener: about a sixth of a relayed request's CPU. The views need little of that:
method, path, headers, META for a few names, the body. They stay ordinary Django views, listed in the
project's URL map (which resolves them, cached per path) and reachable through Django's test client.

What the views rely on is kept: a client that disconnects cancels the view at once (the relay closes its
upstream and records a 499), a server that cancels the request (its shutdown wait ran out) cancels the
view too, an oversized body raises `RequestDataTooBig` when read, and an exception that escapes a view
is a JSON 500, never an HTML page.
"""

import asyncio
import logging
from contextlib import aclosing

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, QueryDict
from django.urls import Resolver404, get_resolver

from aigateway.errors import GatewayError
from aigateway.security_headers import NOSNIFF
from providers.dialects.openai import openai

logger = logging.getLogger(__name__)

# Paths resolved so far -> (view, args, kwargs). Bounded: /v1/models/<name> takes any name.
_RESOLVED_MAX = 1024


class ApiHeaders(dict):
    """Request headers by lower-cased name, read case-insensitively like Django's `request.headers`;
    a repeated header's values are joined with ',' as Django joins them."""

    __slots__ = ()

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class ApiRequest:
    """What an API view reads of its request, built from the ASGI scope and the received body."""

    # gateway_*: what the edge learns of the request on its way (its id, its key's context, its JSON body).
    __slots__ = (
        "method", "path", "headers", "scope", "gateway_request_id", "gateway_key", "gateway_body",
        "_body", "_too_big", "_meta",
    )  # fmt: skip

    def __init__(self, scope, body: bytes, too_big: bool) -> None:
        self.scope = scope
        self.gateway_key = None
        self.gateway_body = None
        self.method = scope["method"]
        self.path = scope["path"]
        headers = ApiHeaders()
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{dict.__getitem__(headers, name)},{value}" if dict.__contains__(headers, name) else value
        self.headers = headers
        self._body = body
        self._too_big = too_big
        self._meta = None

    @property
    def body(self) -> bytes:
        if self._too_big:
            raise RequestDataTooBig("request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE")
        return self._body

    @property
    def META(self) -> "ApiMeta":  # noqa: N802 - Django's name, read by views written for Django's request
        if self._meta is None:
            self._meta = ApiMeta(self)
        return self._meta

    @property
    def GET(self) -> QueryDict:  # noqa: N802 - Django's name, read by views written for Django's request
        """The query string's parameters, as Django's request has them."""
        return QueryDict(self.META.get("QUERY_STRING", ""))


class ApiMeta:
    """Django's META names (CGI: HTTP_*, CONTENT_LENGTH, CONTENT_TYPE, QUERY_STRING, ...) read from the
    request on demand: a view reads two or three of them, so no dict of all of them is built."""

    __slots__ = ("_request",)

    def __init__(self, request: ApiRequest) -> None:
        self._request = request

    def get(self, name: str, default=None):
        request = self._request
        if name.startswith("HTTP_"):
            return request.headers.get(name[5:].replace("_", "-"), default)
        if name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            return request.headers.get(name.replace("_", "-"), default)
        if name == "QUERY_STRING":
            return request.scope.get("query_string", b"").decode("latin-1")
        if name == "REQUEST_METHOD":
            return request.method
        if name == "PATH_INFO":
            return request.path
        if name == "REMOTE_ADDR":
            client = request.scope.get("client")
            return client[0] if client else default
        return default

    def __getitem__(self, name: str):
        value = self.get(name, _MISSING)
        if value is _MISSING:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, _MISSING) is not _MISSING


_MISSING = object()


class _Exchange:
    """One request's state shared with its disconnect listener."""

    __slots__ = ("client_gone", "answered")

    def __init__(self) -> None:
        self.client_gone = False
        self.answered = False


class ApiHandler:
    """ASGI app for the API paths (see the module docstring)."""

    def __init__(self, urlconf: str | None = None) -> None:
        # None: the project's URL map (ROOT_URLCONF).
        self._urlconf = urlconf
        self._resolved: dict[str, tuple] = {}
        self._body_limit: int | None = None

    def _resolve(self, path: str):
        found = self._resolved.get(path)
        if found is None:
            match = get_resolver(self._urlconf).resolve(path)
            found = (match.func, match.args, match.kwargs)
            if len(self._resolved) < _RESOLVED_MAX:
                self._resolved[path] = found
        return found

    async def __call__(self, scope, receive, send):
        if self._body_limit is None:
            self._body_limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        # The pieces are joined once at the end: appending each to the body so far would copy it again for
        # every piece (quadratic for a body sent in many small writes).
        chunks: list[bytes] = []
        size, too_big = 0, False
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body was complete: nothing to answer
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk and not too_big:
                size += len(chunk)
                if size > self._body_limit:
                    # The rest is read and dropped, so the client still gets its 413 in its format.
                    chunks, too_big = [], True
                else:
                    chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = ApiRequest(scope, body, too_big)

        task = asyncio.current_task()
        exchange = _Exchange()
        listener = asyncio.get_running_loop().create_task(self._listen(receive, task, exchange))
        try:
            try:
                view, args, kwargs = self._resolve(request.path)
            except Resolver404:
                response = _error_response(GatewayError(404, "not_found", f"no such endpoint: {request.path}"))
            else:
                try:
                    response = await view(request, *args, **kwargs)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The API views answer their own errors; this is a defect, still answered in JSON.
                    logger.exception("unhandled error on %s %s", request.method, request.path)
                    error = GatewayError(500, "internal_error", "the gateway failed to handle this request")
                    response = _error_response(error)
            await self._send_response(response, send, exchange)
        except asyncio.CancelledError:
            if exchange.client_gone and task.uncancel() == 0:
                return  # the view has recorded its call; there is no one left to answer
            raise
        finally:
            listener.cancel()

    @staticmethod
    async def _listen(receive, task: asyncio.Task, exchange: _Exchange) -> None:
        """Cancel the request's task when its client disconnects before the response is complete."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not exchange.answered:
                    exchange.client_gone = True
                    task.cancel()
                return

    @staticmethod
    async def _send_response(response, send, exchange: _Exchange) -> None:
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
        for cookie in response.cookies.values():
            headers.append((b"set-cookie", cookie.output(header="").encode("ascii").strip()))
        if not response.has_header("x-content-type-options"):
            headers.append(NOSNIFF)
        if not response.streaming and not response.has_header("content-length"):
            # Known length: the server sends it as is instead of chunk-encoding a single part.
            headers.append((b"content-length", str(len(response.content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        if response.streaming:
            # The relay's iterator itself (see streaming.relay.stream_response), closed on any exit.
            content = getattr(response, "relay_body", None)
            if content is None:
                content = response.streaming_content if response.is_async else aiter(response)
            async with aclosing(content) as parts:
                async for part in parts:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                    if exchange.client_gone:
                        # The listener's cancellation was swallowed on its way (redis-py completes a command
                        # under way and drops a cancellation that came meanwhile), and the server drops
                        # writes to a closed connection: stop here, as the cancellation would have.
                        raise asyncio.CancelledError
            exchange.answered = True
            await send({"type": "http.response.body", "body": b""})
        else:
            exchange.answered = True
            await send({"type": "http.response.body", "body": response.content})


def _error_response(error: GatewayError) -> HttpResponse:
    return HttpResponse(orjson.dumps(openai.error_body(error)), status=error.status, content_type="application/json")
