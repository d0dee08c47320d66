"""The API paths' ASGI handler, driven through the ASGI protocol itself (the relay's end-to-end behaviour
through it - disconnects, shutdown, streaming - is tested over real HTTP in streaming/ and tests/)."""

import asyncio

import orjson
import pytest
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import override_settings
from django.urls import path
from hypothesis import given
from hypothesis import strategies as st

from aigateway.api_handler import ApiHandler, ApiRequest

seen: dict = {}


async def echo(request):
    try:
        body = request.body
    except RequestDataTooBig:
        return HttpResponse(b"too big", status=413)
    seen["request"] = request
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "auth": request.headers.get("Authorization"),
            "has_x_api_key": "X-Api-Key" in request.headers,
            "multi": request.headers.get("x-multi"),
            "length": request.META.get("CONTENT_LENGTH"),
            "query": request.META.get("QUERY_STRING"),
            "rule_header": request.META.get("HTTP_X_ROUTE_HINT"),
            "body": body.decode(),
        }
    )


async def named(request, name: str):
    return HttpResponse(name.encode(), headers={"x-content-type-options": "custom"})


async def broken(request):
    raise RuntimeError("secret detail")


async def slow(request):
    seen["slow_started"].set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        seen["slow_cancelled"] = True
        raise
    return HttpResponse(b"late")


async def stream(request):
    async def events():
        try:
            for number in range(3):
                yield f"data: {number}\n\n".encode()
                await asyncio.sleep(0)
            seen["stream_released"].set()
            await asyncio.sleep(30)
            yield b"never"
        finally:
            seen["stream_closed"] = True

    return StreamingHttpResponse(events(), content_type="text/event-stream")


urlpatterns = [
    path("v1/echo", echo),
    path("v1/named/<path:name>", named),
    path("v1/broken", broken),
    path("v1/slow", slow),
    path("v1/stream", stream),
]


def scope_for(route: str, *, method: str = "POST", headers=(), query: bytes = b"") -> dict:
    return {
        "type": "http",
        "method": method,
        "path": route,
        "query_string": query,
        "headers": list(headers),
        "client": ("127.0.0.1", 5000),
    }


class Exchange:
    """One request through the handler: the messages the client sends and what the handler sent back."""

    def __init__(self, chunks: list[bytes], *, disconnect_after: asyncio.Event | None = None) -> None:
        self.incoming: asyncio.Queue = asyncio.Queue()
        for index, chunk in enumerate(chunks):
            self.incoming.put_nowait({"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1})
        self.sent: list[dict] = []
        self.disconnect_after = disconnect_after

    async def receive(self):
        if self.incoming.empty() and self.disconnect_after is not None:
            await self.disconnect_after.wait()
            return {"type": "http.disconnect"}
        if self.incoming.empty():
            await asyncio.Event().wait()  # a client that stays connected
        return await self.incoming.get()

    async def send(self, message):
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def headers(self) -> dict:
        return {name.decode().lower(): value.decode() for name, value in self.sent[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.sent[1:])


HANDLER = ApiHandler(urlconf=__name__)


async def run(route: str, chunks=(b"",), **scope_options) -> Exchange:
    exchange = Exchange(list(chunks))
    await HANDLER(scope_for(route, **scope_options), exchange.receive, exchange.send)
    return exchange


@pytest.mark.asyncio
async def test_request_fields_headers_and_meta_as_django_names_them():
    headers = [
        (b"Authorization", b"Bearer sk-gw-abc"),
        (b"x-api-key", b"k"),
        (b"X-Multi", b"one"),
        (b"x-multi", b"two"),
        (b"content-length", b"11"),
        (b"x-route-hint", b"fast"),
    ]
    exchange = await run("/v1/echo", [b'{"a":', b" 1}", b"   "], headers=headers, query=b"x=1&y=%20")
    assert exchange.status == 200
    answer = orjson.loads(exchange.body)
    assert answer == {
        "method": "POST",
        "path": "/v1/echo",
        "auth": "Bearer sk-gw-abc",
        "has_x_api_key": True,
        "multi": "one,two",
        "length": "11",
        "query": "x=1&y=%20",
        "rule_header": "fast",
        "body": '{"a": 1}   ',
    }
    meta = seen["request"].META
    assert meta["REQUEST_METHOD"] == "POST" and meta["REMOTE_ADDR"] == "127.0.0.1"
    assert "HTTP_X_MISSING" not in meta and meta.get("HTTP_X_MISSING", "d") == "d"
    with pytest.raises(KeyError):
        meta["HTTP_X_MISSING"]
    assert exchange.headers["x-content-type-options"] == "nosniff"
    # A known length goes out as Content-Length (no chunked encoding for one part).
    assert exchange.headers["content-length"] == str(len(exchange.body))


@pytest.mark.asyncio
async def test_a_view_header_of_the_same_name_is_not_duplicated_and_path_arguments_arrive():
    exchange = await run("/v1/named/org/model-1:latest", method="GET")
    assert exchange.status == 200 and exchange.body == b"org/model-1:latest"
    names = [name for name, _ in exchange.sent[0]["headers"]]
    assert names.count(b"x-content-type-options") + names.count(b"X-Content-Type-Options") == 1


@pytest.mark.asyncio
@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100)
async def test_an_oversized_body_is_read_to_its_end_and_refused_when_the_view_reads_it():
    handler = ApiHandler(urlconf=__name__)
    exchange = Exchange([b"x" * 60, b"y" * 60, b"z" * 60])
    await handler(scope_for("/v1/echo"), exchange.receive, exchange.send)
    assert exchange.status == 413
    assert exchange.incoming.empty()  # every part was received, none kept


@pytest.mark.asyncio
async def test_an_exception_escaping_a_view_is_a_json_500_without_its_detail(caplog):
    exchange = await run("/v1/broken")
    assert exchange.status == 500
    assert exchange.headers["content-type"] == "application/json"
    error = orjson.loads(exchange.body)["error"]
    assert error["code"] == "internal_error" and "secret detail" not in exchange.body.decode()
    assert "unhandled error on POST /v1/broken" in caplog.text


@pytest.mark.asyncio
async def test_an_unknown_path_is_a_json_404():
    exchange = await run("/v1/nothing/here", method="GET")
    assert exchange.status == 404
    assert orjson.loads(exchange.body)["error"]["code"] == "not_found"


@pytest.mark.asyncio
async def test_a_client_that_disconnects_cancels_the_view_and_the_handler_returns_quietly():
    seen["slow_started"] = asyncio.Event()
    seen["slow_cancelled"] = False
    gone = asyncio.Event()
    exchange = Exchange([b""], disconnect_after=gone)
    handling = asyncio.ensure_future(HANDLER(scope_for("/v1/slow"), exchange.receive, exchange.send))
    await asyncio.wait_for(seen["slow_started"].wait(), 5)
    gone.set()
    await asyncio.wait_for(handling, 5)  # returns, does not raise CancelledError
    assert seen["slow_cancelled"] is True
    assert exchange.sent == []


@pytest.mark.asyncio
async def test_a_client_that_disconnects_mid_stream_closes_the_stream_at_once():
    seen["stream_released"] = asyncio.Event()
    seen["stream_closed"] = False
    gone = asyncio.Event()
    exchange = Exchange([b""], disconnect_after=gone)
    handling = asyncio.ensure_future(HANDLER(scope_for("/v1/stream"), exchange.receive, exchange.send))
    await asyncio.wait_for(seen["stream_released"].wait(), 5)
    gone.set()
    await asyncio.wait_for(handling, 5)
    assert seen["stream_closed"] is True
    parts = [message.get("body") for message in exchange.sent[1:]]
    # Each event went out as its own body message, as it was produced.
    assert parts == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert exchange.headers["content-type"] == "text/event-stream"
    assert "content-length" not in exchange.headers


@pytest.mark.asyncio
async def test_a_server_cancelling_the_request_cancels_the_view_and_is_passed_on():
    seen["slow_started"] = asyncio.Event()
    seen["slow_cancelled"] = False
    exchange = Exchange([b""])
    handling = asyncio.ensure_future(HANDLER(scope_for("/v1/slow"), exchange.receive, exchange.send))
    await asyncio.wait_for(seen["slow_started"].wait(), 5)
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling
    assert seen["slow_cancelled"] is True


@pytest.mark.asyncio
async def test_a_response_completed_before_the_disconnect_is_not_cancelled():
    gone = asyncio.Event()
    gone.set()  # the listener hears "disconnect" as soon as the body is read (uvicorn: response complete)
    exchange = Exchange([b"{}"], disconnect_after=gone)
    await HANDLER(scope_for("/v1/named/x", method="GET"), exchange.receive, exchange.send)
    assert exchange.status == 200 and exchange.body == b"x"


@given(
    st.lists(
        st.tuples(st.sampled_from(["X-A", "x-a", "Authorization", "content-type", "X-B"]), st.text(max_size=8)),
        max_size=8,
    )
)
def test_headers_read_as_djangos_request_reads_them(pairs):
    latin = [(name, value.encode("latin-1", "ignore").decode("latin-1")) for name, value in pairs]
    request = ApiRequest(
        scope_for("/v1/echo", headers=[(n.encode(), v.encode("latin-1")) for n, v in latin]), b"", False
    )
    expected: dict[str, str] = {}
    for name, value in latin:
        key = name.lower()
        expected[key] = f"{expected[key]},{value}" if key in expected else value
    for name in ("X-A", "x-a", "AUTHORIZATION", "Content-Type", "x-b", "x-c"):
        assert request.headers.get(name) == expected.get(name.lower())
        assert (name in request.headers) == (name.lower() in expected)
        meta_name = "CONTENT_TYPE" if name.lower() == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        assert request.META.get(meta_name) == expected.get(name.lower())
