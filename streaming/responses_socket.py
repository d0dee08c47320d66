"""The Responses API over a websocket (`ws /v1/responses`, OpenAI's WebSocket mode): a program opens one
socket with its API key and sends `response.create` frames, each carrying the fields of a `POST /v1/responses`
body; every answer streams back as the events that request's SSE stream would carry, one JSON text frame each.

Each response is an ordinary relay call, built, admitted, relayed and recorded as the HTTP door does it
(streaming.views.relay_call_build, call_admit, relay_open): the key's limits and budgets, routing and failover,
the usage record, metrics, the request log and the response cache are the same. A frame may name a lane
(`stream_id`): the frames of a lane are answered one after another in the order they came, lanes run side by
side, and every event of a response carries its lane's `stream_id`. A frame the socket cannot act on gets an
`error` event in OpenAI's websocket shape (`{"type": "error", "status": ..., "error": {...}}`), in its lane's
order, and the socket stays open. A socket without a valid key is closed with 4401 after such an event; a
client that goes away stops every response it had running (upstream closed, recorded as 499).
"""

import asyncio
import logging
import sys
import time
from collections import OrderedDict, deque
from contextlib import aclosing

import orjson
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from accounts.auth import key_context_resolve
from accounts.context import KeyContext
from aigateway.errors import GatewayError, bad_request
from aigateway.metrics import metrics_response
from providers.dialects.canonical import Finish, Start, UsageReport
from providers.dialects.responses import responses
from providers.dialects.sse import SSEDecoder
from streaming.cache import cache_directive, cache_plan
from streaming.cache_hits import cache_replay
from streaming.consumers import CLOSE_UNAUTHENTICATED, frame_size, scope_headers, scope_meta, socket_key
from streaming.edge import call_admit, check_responses_body, json_depth_check, route_choose
from streaming.refusals import refusal_note
from streaming.relay import RelayCall, new_request_id, relay_open
from streaming.views import relay_call_build

logger = logging.getLogger(__name__)

# Frames a socket has taken and not yet answered (waiting in a lane, or streaming): what one socket may hold
# of the gateway's memory and of the key's concurrency. A frame beyond it is refused at once with a 429.
FRAMES_PENDING_MAX = 32
# A lane's id is echoed in every event of its responses: a longer one is refused.
STREAM_ID_MAX_CHARS = 128
# Fields of a frame that belong to the websocket, not to the Responses body.
_ENVELOPE = ("type", "stream_id")
# The name these answers are counted under in gateway_responses_total.
METRICS_VIEW = "responses_socket"
KEY_HEADERS = "send it as 'Authorization: Bearer <key>' or 'x-api-key' when opening the socket"
# Responses of this socket a later response.create may continue with `previous_response_id` (their whole
# conversation kept in memory, in process, while the socket is open: nothing is stored).
RECENT_RESPONSES_MAX = 4
# Events whose `response` ends a response and holds its output items.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


def error_event(error: GatewayError, stream_id: str | None, request_id: str | None = None) -> dict:
    """`error` as the websocket's error event: OpenAI's error object under `error`, the HTTP status the same
    request would have had, and the headers it would have carried (its request id, rate-limit headers)."""
    detail = responses.error_body(error)["error"]
    headers = dict(error.headers)
    if request_id is not None:
        headers.setdefault("x-request-id", request_id)
    if headers:
        detail["headers"] = headers
    event = {"type": "error", "status": error.status, "error": detail}
    if stream_id is not None:
        event["stream_id"] = stream_id
    return event


def stream_error_event(data: str, status: int, stream_id: str | None) -> dict:
    """An `error` event of the SSE stream (flat: `code`, `message`, `param`, `sequence_number`) in the
    websocket's shape, which nests them under `error` as the SDKs read it there."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = {}
    nested = payload.get("error") if isinstance(payload, dict) else None
    fields = nested if isinstance(nested, dict) else payload if isinstance(payload, dict) else {}
    message = fields.get("message")
    code = fields.get("code")
    error = GatewayError(
        status,
        code if isinstance(code, str) else "upstream_stream_error",
        message if isinstance(message, str) and message else "the response failed mid-stream",
        param=fields.get("param") if isinstance(fields.get("param"), str) else None,
    )
    event = error_event(error, stream_id)
    if isinstance(payload, dict) and "sequence_number" in payload:
        event["sequence_number"] = payload["sequence_number"]
    return event


def with_stream_id(data: str, member: str) -> str:
    """`data`, one JSON object as the relay rendered or passed it on, with the lane's `"stream_id":...`
    member added last: the event is sent as it came, not decoded and encoded again."""
    head = data.rstrip()
    if not head.endswith("}"):
        return data  # not an object: the relay sends none, nothing to add a member to
    head = head[:-1].rstrip()
    return f"{head}{'' if head.endswith('{') else ','}{member}}}"


def _lane_finished(task: asyncio.Task) -> None:
    # The client gone while its events were being sent (ClientDisconnected is an OSError) ends a lane too.
    if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, OSError):
        logger.error("responses socket lane failed", exc_info=exc)


class ResponsesSocketConsumer(AsyncWebsocketConsumer):
    # No channel layer: nothing elsewhere ever sends to these sockets, so an idle one costs Redis nothing.
    channel_layer_alias = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plaintext_key: str | None = None
        self.headers: dict[str, str] = {}
        self.meta: dict[str, str] = {}
        # Each lane's frames waiting to be answered (the first one is being answered), and its worker.
        self.lanes: dict[str | None, deque] = {}
        self.workers: dict[str | None, asyncio.Task] = {}
        self.pending = 0
        # One frame at a time onto the socket, whichever lane sends it.
        self.sending = asyncio.Lock()
        self.closed = False
        # response id -> its conversation (input items, then output items), newest last.
        self.recent: OrderedDict[str, list] = OrderedDict()

    async def __call__(self, scope, receive, send):
        try:
            return await super().__call__(scope, receive, send)
        finally:
            # However the socket ends (a send to a client already gone ends the consumer with an exception
            # instead of a disconnect message), its responses must not stream on for nobody.
            await self._stop()

    async def dispatch(self, message) -> None:
        # Channels closes stale database connections in a worker thread before every message; no frame of
        # this socket touches the database (keys and routes are cached in process; a cold one is read by
        # aigateway.db.db_read, which closes its own connection), so each frame is spared that thread hop.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.headers = scope_headers(self.scope)
        self.plaintext_key = socket_key(self.headers)
        self.meta = scope_meta(self.scope)
        await self.accept()
        if not self.plaintext_key:
            await self._unauthenticated(GatewayError(401, "missing_api_key", f"no API key provided: {KEY_HEADERS}"))
        elif await key_context_resolve(self.plaintext_key) is None:
            await self._unauthenticated(GatewayError(401, "invalid_api_key", "invalid, disabled or expired API key"))

    async def disconnect(self, code) -> None:
        self.closed = True
        await self._stop()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.closed:
            return  # frames that arrived before the socket closed
        size = len(bytes_data or b"") if text_data is None else frame_size(text_data)
        stream_id = None
        try:
            content = self._content(text_data, size)
            stream_id = _stream_id(content)
        except GatewayError as error:
            # Answered in the order of the lane it names, or of the default lane when it names none: a client
            # reading a lane's responses one after another reads this one in its place.
            item = (error, None, size)
        else:
            item = (None, content, size)
        if self.pending >= FRAMES_PENDING_MAX:
            await self._error(
                GatewayError(
                    429,
                    "too_many_pending_frames",
                    f"this socket already holds {FRAMES_PENDING_MAX} frames waiting or streaming; send more "
                    "once a response has finished",
                ),
                stream_id,
            )
            return
        self.pending += 1
        self.lanes.setdefault(stream_id, deque()).append(item)
        if stream_id not in self.workers:
            worker = asyncio.create_task(self._lane(stream_id))
            worker.add_done_callback(_lane_finished)
            self.workers[stream_id] = worker

    def _content(self, text_data: str | None, size: int) -> dict:
        """The frame as a JSON object, or the GatewayError that names what is wrong with it."""
        limit = settings.GATEWAY_MAX_BODY_BYTES
        if size > limit:
            raise GatewayError(413, "request_too_large", f"frame of {size} bytes exceeds the limit of {limit} bytes")
        if text_data is None:
            raise bad_request("frames must be JSON text, got a binary frame")
        try:
            content = orjson.loads(text_data)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"frame is not valid JSON: {exc}") from None
        if not isinstance(content, dict):
            raise bad_request(f"frame must be a JSON object, got {type(content).__name__}")
        json_depth_check(text_data, content)
        return content

    async def _lane(self, stream_id: str | None) -> None:
        """Answer the lane's frames in order until none is left."""
        queue = self.lanes[stream_id]
        try:
            while queue and not self.closed:
                error, content, size = queue[0]
                try:
                    # Each frame in a task of its own: the relay ties a call's cleanup to the task that opened it.
                    await asyncio.create_task(self._answer(stream_id, error, content, size))
                finally:
                    queue.popleft()
                    self.pending -= 1
        finally:
            self.lanes.pop(stream_id, None)
            self.workers.pop(stream_id, None)

    async def _answer(self, stream_id: str | None, error: GatewayError | None, content: dict | None, size: int):
        if error is not None:
            await self._error(error, stream_id)
            return
        kind = content.get("type")
        if kind == "response.create":
            try:
                await self._respond(stream_id, content, size)
            except OSError:
                raise  # the client went away while its events were being sent: nothing left to tell it
            except Exception:
                # A defect of ours: the client gets an error event, the log the traceback, the socket goes on.
                logger.exception("responses socket: a response.create frame failed")
                failure = GatewayError(500, "internal_error", "the gateway failed to handle this response.create")
                await self._error(failure, stream_id)
            return
        if kind is None:
            problem = "frame has no 'type'; expected 'response.create'"
        elif kind == "response.steer":
            problem = "'response.steer' is not supported: this gateway keeps no responses to steer"
        else:
            problem = f"unknown frame type {str(kind)!r}; expected 'response.create'"
        await self._error(bad_request(problem, param="type"), stream_id)

    async def _respond(self, stream_id: str | None, content: dict, size: int) -> None:
        """One response.create: checked, routed, admitted and relayed as POST /v1/responses is, streamed."""
        started = time.perf_counter()
        request_id = new_request_id()
        body = {name: value for name, value in content.items() if name not in _ENVELOPE}
        ctx: KeyContext | None = None
        call: RelayCall | None = None
        try:
            ctx = await key_context_resolve(self.plaintext_key)
            if ctx is None:
                # Disabled, deleted or expired since the socket opened: the socket is over.
                error = GatewayError(401, "invalid_api_key", "invalid, disabled or expired API key")
                await self._error(error, stream_id, request_id=request_id)
                metrics_response(METRICS_VIEW, error.status)
                await self._close(CLOSE_UNAUTHENTICATED)
                return
            _check_socket_fields(body)
            body["stream"] = True
            self._continued(body)
            check_responses_body(body)
            directive = cache_directive(self.headers)
            decision = await route_choose(ctx, body, dialect=responses.name, meta=self.meta, body_size=size)
            call = relay_call_build(
                request_id=request_id,
                ctx=ctx,
                body=body,
                decision=decision,
                dialect=responses,
                endpoint="responses",
                started=started,
            )
            if body.pop("generate", True) is False:
                metrics_response(METRICS_VIEW, 200)
                await self._stream(call, _warmup_events(call), stream_id, body)
                return
            cache_plan(call, directive)
            await call_admit(call, size)
            events = cache_replay(call, call.cache_answer) if call.cache_hit else await relay_open(call)
        except GatewayError as error:
            if call is not None:
                error.headers = {**call.headers(), **error.headers}
            await self._error(error, stream_id, ctx=ctx, body=body, request_id=request_id, started=started)
            metrics_response(METRICS_VIEW, error.status)
            return
        metrics_response(METRICS_VIEW, 200)
        await self._stream(call, events, stream_id, body)

    def _continued(self, body: dict) -> None:
        """A body continuing a response of this socket (`previous_response_id`) with that response's whole
        conversation before its own input, as the client would have sent it in full. An id this socket did not
        answer (or no longer keeps) is refused: responses over the websocket are not stored."""
        previous = body.get("previous_response_id")
        if previous is None:
            return
        if not isinstance(previous, str) or previous not in self.recent:
            raise bad_request(
                "'previous_response_id' names no response of this socket: over the websocket the gateway stores no "
                f"responses, and only the last {RECENT_RESPONSES_MAX} responses of the same socket can be continued; "
                "send the full input with every request",
                param="previous_response_id",
            )
        body["input"] = [*self.recent[previous], *_input_items(body.get("input"))]
        del body["previous_response_id"]

    def _remember(self, body: dict, data: str) -> None:
        """Keep a finished response's conversation for a later `previous_response_id` on this socket."""
        try:
            response = orjson.loads(data).get("response")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        output = response.get("output")
        items = [*_input_items(body.get("input")), *(output if isinstance(output, list) else [])]
        self.recent[response["id"]] = items
        while len(self.recent) > RECENT_RESPONSES_MAX:
            self.recent.popitem(last=False)

    async def _stream(self, call: RelayCall, events, stream_id: str | None, body: dict) -> None:
        """The relay's SSE body chunks (one event each, or a keepalive comment) as websocket frames. Closing
        `events`, however this ends, closes the upstream and records the call (see relay._stream_body)."""
        decoder = SSEDecoder(max_line_bytes=sys.maxsize)  # the relay's own events: no upstream to guard against
        member = None if stream_id is None else '"stream_id":' + orjson.dumps(stream_id).decode()
        async with aclosing(events) as chunks:
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    if event.event == "error":
                        status = call.status if call.status >= 400 else 500
                        text = orjson.dumps(stream_error_event(event.data, status, stream_id)).decode()
                    else:
                        text = event.data if member is None else with_stream_id(event.data, member)
                        if event.event in _FINAL_EVENTS:
                            self._remember(body, event.data)
                    await self._send_text(text)

    async def _error(
        self,
        error: GatewayError,
        stream_id: str | None,
        *,
        ctx: KeyContext | None = None,
        body: dict | None = None,
        request_id: str | None = None,
        started: float | None = None,
    ) -> None:
        """An error event. A refusal is counted, and recorded when the key is known (as the HTTP door does)."""
        if ctx is None and self.plaintext_key:
            ctx = await key_context_resolve(self.plaintext_key)
        recorded = refusal_note(error, ctx, endpoint="responses", body=body, request_id=request_id, started=started)
        await self._send_text(orjson.dumps(error_event(error, stream_id, request_id or recorded)).decode())

    async def _send_text(self, text: str) -> None:
        async with self.sending:
            if not self.closed:
                await self.send(text_data=text)

    async def _unauthenticated(self, error: GatewayError) -> None:
        await self._error(error, None)
        await self._close(CLOSE_UNAUTHENTICATED)

    async def _close(self, code: int) -> None:
        async with self.sending:
            if self.closed:
                return
            self.closed = True
            await self.close(code=code)

    async def _stop(self) -> None:
        """Stop every lane, and wait until their responses have stopped upstream and been recorded."""
        self.closed = True
        workers = list(self.workers.values())
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)


async def _warmup_events(call: RelayCall):
    """The answer to a `generate: false` frame (Codex sends one when it starts, to warm the provider's prompt
    cache): a response with no output and no tokens, which a later frame may continue. No provider is called,
    so nothing is billed or recorded; the frame was checked and routed like any other."""
    renderer = responses.stream_renderer(model=call.response_model, include_usage=True)
    for event in (Start(""), UsageReport(0, 0), Finish("stop")):
        for chunk in renderer.render(event):
            yield chunk
    for chunk in renderer.close():
        yield chunk


def _input_items(raw) -> list:
    """A Responses `input` as a list of items (a string is one user message)."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    return list(raw) if isinstance(raw, list) else []


def _stream_id(content: dict) -> str | None:
    stream_id = content.get("stream_id")
    if stream_id is None:
        return None
    if not isinstance(stream_id, str) or not stream_id or len(stream_id) > STREAM_ID_MAX_CHARS:
        raise bad_request(
            f"'stream_id' must be a non-empty string of at most {STREAM_ID_MAX_CHARS} characters", param="stream_id"
        )
    return stream_id


def _check_socket_fields(body: dict) -> None:
    """What a response.create frame may not carry that a POST body may: over the socket every response
    streams, and none runs in the background."""
    if body.get("stream") not in (None, True):
        raise bad_request(
            "'stream' is implied over the websocket (every response streams): leave it out", param="stream"
        )
    if body.get("background"):
        raise bad_request(
            "'background' is not supported over the websocket: use POST /v1/responses", param="background"
        )
