"""Compare: one prompt, several models at once, their answers merged into one stream of event dicts.

It is a door like the chat endpoints: each model is one ordinary relay call (admitted under the
key's limits, routed with failover, recorded as its own usage record with endpoint `compare` and
the run's id, closed upstream when the run stops). `/v1/compare` writes the events as SSE, the
playground websocket as JSON frames. Events of different models interleave as they arrive; one
model failing or being refused never stops the others.
"""

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from accounts.context import KeyContext
from aigateway.errors import GatewayError, bad_request
from providers.dialects.base import Dialect, StreamRenderer
from providers.dialects.canonical import (
    ChatRequest,
    StreamError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
)
from providers.dialects.openai import openai
from providers.route_rules import RouteDecision
from streaming.cache import cache_plan
from streaming.cache_hits import cache_replay
from streaming.edge import call_admit, check_chat_body, route_choose
from streaming.meter import StreamMeter
from streaming.refusals import refusal_count, refusal_record
from streaming.relay import RelayCall, call_cost, call_end, call_usage, new_request_id, relay_open

logger = logging.getLogger(__name__)

# Body fields that belong to the compare request itself, not to each model's chat request.
_RUN_FIELDS = (
    "type",
    "key_id",
    "models",
    "model",
    "messages",
    "messages_by_model",
    "params_by_model",
    "stream",
    "stream_options",
)

# A speed means something only over several tokens and some time: an answer that came in one piece (a cache hit,
# a provider that sends it whole) or in a blink has none. The playground waits for as much before it shows one.
SPEED_MIN_TOKENS = 5
SPEED_MIN_SECONDS = 0.15


class CompareRenderer(StreamRenderer):
    """Canonical stream events of one model -> compare event dicts. The model's first frame of output (answer,
    reasoning or a tool call) carries `ttft_ms`, taken by the meter as it is relayed: its done event reports the
    same figure, so a page shows one time to first token from the first frame on."""

    def __init__(self, model: str, meter: StreamMeter | None = None) -> None:
        self.model = model
        self.meter = meter

    def _output(self, frame: dict) -> list[dict]:
        if self.meter is not None:
            first = self.meter.first_token is None
            ttft = self.meter.token()
            if first:
                frame["ttft_ms"] = ttft
        return [frame]

    def render(self, event: StreamEvent) -> list[dict]:
        match event:
            case TextDelta(text=text) if text:
                return self._output({"type": "chunk", "model": self.model, "content": text})
            case ThinkingDelta(text=text) if text:
                return self._output({"type": "reasoning", "model": self.model, "content": text})
            case ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments) if call_id or name or arguments:
                # As OpenAI streams them: the call's id and name on its first delta, its JSON arguments in pieces.
                frame = {"type": "tool_call", "model": self.model, "index": index}
                if call_id:
                    frame["id"] = call_id
                if name:
                    frame["name"] = name
                frame["arguments"] = arguments
                return self._output(frame)
            case StreamError(message=message):
                return [error_event(GatewayError(502, "upstream_stream_error", message), self.model)]
        return []

    def close(self) -> list[dict]:
        return []


@dataclass
class CompareFormat(Dialect):
    """The compare door as a client dialect of the relay: requests read as OpenAI chat bodies, answers
    render as compare events of one model. Never the same as a provider's dialect, so the relay always
    translates through the canonical model."""

    model: str = ""
    # The call's meter: the renderer takes the time to the first token with it.
    meter: StreamMeter | None = None

    def parse_request(self, body: dict):
        return openai.parse_request(body)

    def stream_renderer(
        self, *, model: str, include_usage: bool, prompt_estimate: int | None = None
    ) -> CompareRenderer:
        return CompareRenderer(self.model, self.meter)

    def stream_error_event(self, error: GatewayError) -> dict:
        return error_event(error, self.model)


def error_event(error: GatewayError, model: str | None = None) -> dict:
    event = {"type": "error", "status": error.status, "code": error.code, "message": error.message}
    if model is not None:
        event["model"] = model
    return event


@dataclass
class CompareRequest:
    """A checked compare request: the key, and one OpenAI chat body per model."""

    ctx: KeyContext
    models: list[str]
    bodies: dict[str, dict]
    body_size: int
    # How each requested name is served (alias, rule, context fallback), keyed by the requested name.
    decisions: dict[str, RouteDecision] = field(default_factory=dict)
    # Each body in the canonical model, as compare_calls parsed it.
    parsed: dict[str, ChatRequest] = field(default_factory=dict)
    # The client's response cache directive ("", "no-cache" or "no-store"; see streaming.cache).
    cache_directive: str = ""


def _models(body: dict, cap: int) -> list[str]:
    models = body.get("models")
    if models is None:
        raise bad_request("'models' is required: a list of model names to compare", param="models")
    if not isinstance(models, list) or not models:
        raise bad_request("'models' must be a non-empty array of model names", param="models")
    for index, name in enumerate(models):
        if not isinstance(name, str) or not name.strip():
            raise bad_request(f"'models[{index}]' must be a non-empty string", param=f"models[{index}]")
    # The cap first: a list of a million names is refused without looking at them twice.
    if len(models) > cap:
        raise bad_request(
            f"this key's tier allows at most {cap} models per compare request, got {len(models)}",
            param="models",
            code="too_many_models",
        )
    duplicates = sorted(name for name, count in Counter(models).items() if count > 1)
    if duplicates:
        raise bad_request(f"'models' lists {_quoted(duplicates)} more than once", param="models")
    return models


def _check_stream(body: dict) -> None:
    """A compare run always streams: `stream` may be left out or true; false asks for an answer this
    endpoint never gives, so it is refused rather than answered with a stream the client does not expect."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    if stream is False:
        raise bad_request("/v1/compare always streams: send 'stream': true or leave 'stream' out", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _conversations(body: dict, models: list[str]) -> dict[str, object]:
    """The messages each model gets: one shared `messages`, or `messages_by_model` (one history per model)."""
    by_model = body.get("messages_by_model")
    if by_model is None:
        if "messages" not in body:
            raise bad_request("'messages' (or 'messages_by_model') is required", param="messages")
        return dict.fromkeys(models, body["messages"])
    if "messages" in body:
        raise bad_request("send either 'messages' or 'messages_by_model', not both", param="messages_by_model")
    if not isinstance(by_model, dict):
        raise bad_request("'messages_by_model' must be an object of model name -> messages", param="messages_by_model")
    missing = [name for name in models if name not in by_model]
    extra = sorted(set(by_model) - set(models))
    if missing or extra:
        problems = ([f"no messages for {_quoted(missing)}"] if missing else []) + (
            [f"messages for {_quoted(extra)}, which is not in 'models'"] if extra else []
        )
        raise bad_request(
            f"'messages_by_model' does not match 'models': {'; '.join(problems)}", param="messages_by_model"
        )
    return {name: by_model[name] for name in models}


def _overrides(body: dict, models: list[str]) -> dict[str, dict]:
    """Each model's own parameters (`params_by_model: {"model": {"temperature": 0.2, ...}}`), over the shared
    ones; a model left out gets the shared ones only. The run's own fields cannot be set per model."""
    by_model = body.get("params_by_model")
    if by_model is None:
        return {}
    if not isinstance(by_model, dict):
        raise bad_request(
            "'params_by_model' must be an object of model name -> chat parameters", param="params_by_model"
        )
    extra = sorted(set(by_model) - set(models))
    if extra:
        raise bad_request(
            f"'params_by_model' has parameters for {_quoted(extra)}, which is not in 'models'", param="params_by_model"
        )
    for name, params in by_model.items():
        if not isinstance(params, dict):
            raise bad_request(
                f"'params_by_model.{name}' must be an object of chat parameters", param=f"params_by_model.{name}"
            )
        fixed = sorted(field for field in params if field in _RUN_FIELDS)
        if fixed:
            raise bad_request(
                f"'params_by_model.{name}' cannot set {_quoted(fixed)}: it is the same for every model of the run",
                param=f"params_by_model.{name}",
            )
    return by_model


def compare_calls(body: dict, *, cap: int) -> dict[str, tuple[dict, ChatRequest]]:
    """Each model of a compare request, in the request's order: its OpenAI chat body and that body in
    the canonical model, parsed once here and reused by the relay; a 400 GatewayError naming the
    problem for anything the relay could not run (pure: no I/O)."""
    _check_stream(body)
    models = _models(body, cap)
    conversations = _conversations(body, models)
    overrides = _overrides(body, models)
    shared = {name: value for name, value in body.items() if name not in _RUN_FIELDS}
    calls = {}
    for name in models:
        own = overrides.get(name) or {}
        chat = {**shared, **own, "model": name, "messages": conversations[name], "stream": True}
        try:
            check_chat_body(chat)
            request = openai.parse_request(chat)
        except GatewayError as error:
            if error.param not in own:
                raise
            # The model's own value is at fault: say which model's, so the page can point at that column.
            raise bad_request(
                f"'params_by_model.{name}': {error.message}", param=f"params_by_model.{name}.{error.param}"
            ) from None
        calls[name] = (chat, request)
    return calls


async def compare_prepare(*, ctx: KeyContext, body: dict, body_size: int, meta: dict | None = None) -> CompareRequest:
    """Check a compare request up front (400 shape and cap, then 404/403 per model, as the chat
    endpoint would answer); nothing is admitted or opened yet. `meta` holds the request's headers as
    Django's META names (`HTTP_X_TEAM`), for routing rules that look at headers."""
    calls = compare_calls(body, cap=ctx.max_compare_models)
    bodies = {name: chat for name, (chat, _) in calls.items()}
    decisions = {
        name: await route_choose(ctx, chat, dialect="openai", meta=meta, body_size=body_size)
        for name, chat in bodies.items()
    }
    parsed = {name: request for name, (_, request) in calls.items()}
    return CompareRequest(
        ctx=ctx, models=list(bodies), bodies=bodies, body_size=body_size, decisions=decisions, parsed=parsed
    )


def new_run_id() -> str:
    return "cmp_" + uuid.uuid4().hex


def _usage_fields(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _billed(call: RelayCall) -> dict:
    """What the call's usage record bills (the same tokens and cost, computed the same way), and its time to the
    first token: for a done event, and for the error event of a model that failed, was cut off or cancelled."""
    usage, estimated = call_usage(call)
    return {
        "usage": _usage_fields(usage),
        "tokens_estimated": estimated,
        "cost": float(call_cost(call, usage)),
        "ttft_ms": call.meter.first_token_ms(),
    }


def tokens_per_second(meter: StreamMeter, completion_tokens: int, duration_ms: float) -> float | None:
    """Output tokens per second from the first token to the end; None when it would mean nothing (see
    SPEED_MIN_TOKENS): too few tokens, too short a time, or the whole answer in one piece."""
    ttft = meter.first_token_ms()
    if ttft is None or meter.token_deltas < 2 or completion_tokens < SPEED_MIN_TOKENS:
        return None
    generating = (duration_ms - ttft) / 1000.0
    if generating < SPEED_MIN_SECONDS:
        return None
    return round(completion_tokens / generating, 2)


def _done_event(call: RelayCall) -> dict:
    billed = _billed(call)
    duration = call.meter.summary()["duration_ms"]
    route = call.route
    return {
        "type": "done",
        "model": call.requested_model or call.model,
        "served_model": call.model,
        "route": call.route_label,
        "request_id": call.request_id,
        "provider": route.provider.name if route else None,
        "finish_reason": call.finish_reason,
        **billed,
        "duration_ms": duration,
        "tokens_per_s": tokens_per_second(call.meter, billed["usage"]["completion_tokens"], duration),
        # Answered from the response cache: no provider was called, and `cost` is 0.
        "cached": call.cache_hit,
    }


def _tool_calls_collect(calls: dict[int, dict], frame: dict) -> None:
    """Assemble a model's tool calls from its `tool_call` frames, in OpenAI's shape."""
    call = calls.setdefault(frame["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if frame.get("id"):
        call["id"] = frame["id"]
    if frame.get("name"):
        call["function"]["name"] = frame["name"]
    call["function"]["arguments"] += frame.get("arguments") or ""


# Events a model may have waiting for the reader. Only a model's streamed events count (its start, done
# and error events are one each), so the buffering of a run is bounded whatever its reader does.
BUFFERED_EVENTS_PER_MODEL = 32


@dataclass
class CompareRun:
    """One compare request in flight: a task per model feeding one queue that `events()` drains. Each
    queued item is (the model's buffer room to give back once the event is read, or None; the event)."""

    request: CompareRequest
    started: float = field(default_factory=time.perf_counter)
    run_id: str = field(default_factory=new_run_id)
    results: dict[str, dict] = field(default_factory=dict)
    _queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    # Each streaming model's buffer room, and whether the run is stopping.
    _rooms: list[asyncio.Semaphore] = field(default_factory=list)
    _stopping: bool = False

    def cancel(self) -> None:
        """Stop every model still running: upstreams closed, usage recorded as 499; `events()` then
        reports each as cancelled and completes."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for room in self._rooms:
            # A model waiting for room stops there too, even if its cancellation was swallowed on the way
            # (redis-py drops one that arrives while a command is under way) and nobody reads any more.
            for _ in range(BUFFERED_EVENTS_PER_MODEL):
                room.release()

    async def events(self, *, keepalive: float | None = None) -> AsyncIterator[dict | None]:
        """The merged events, ending with `complete`. Closing the iterator early, cancelling the task that
        reads it, or that task ending, cancels every model. With `keepalive`, None comes out after that many
        seconds without an event (a stream stays open through long thinking pauses)."""
        _model_finished = object()
        self._tasks = [asyncio.create_task(self._run_model(name)) for name in self.request.models]
        for task in self._tasks:
            # A done callback fires even for a task cancelled before it ever ran.
            task.add_done_callback(lambda _task: self._queue.put_nowait((None, _model_finished)))
        reader = asyncio.current_task()
        if reader is not None:
            # A server may drop a response body's iterator without closing it when its client leaves: the
            # end of the reading task still stops every model at once, not whenever the iterator is collected.
            reader.add_done_callback(self._reader_done)
        running = len(self._tasks)
        try:
            while running:
                if keepalive and self._queue.empty():
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns an event that arrives
                    # with a cancellation and drops the cancellation, so a client that left mid-stream kept
                    # every model running for nobody.
                    try:
                        async with asyncio.timeout(keepalive):
                            room, event = await self._queue.get()
                    except TimeoutError:
                        yield None
                        continue
                else:
                    room, event = await self._queue.get()
                if event is _model_finished:
                    running -= 1
                    continue
                yield event
                if room is not None:
                    # The reader came back for more: the event is out, its model may buffer another.
                    room.release()
            for name in self.request.models:
                self.results.setdefault(name, {"status": "cancelled"})
            yield {"type": "complete", "run_id": self.run_id, "results": self.results}
        finally:
            if reader is not None:
                reader.remove_done_callback(self._reader_done)
            unfinished = [task for task in self._tasks if not task.done()]
            if unfinished:
                self.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)

    def _reader_done(self, _task: asyncio.Task) -> None:
        self.cancel()

    def _failed(self, name: str, error: GatewayError, call: RelayCall, event: dict | None = None) -> None:
        """A model that failed: its error event (`event`, as the stream made it, or one made of `error`) with
        what its usage record bills."""
        self._queue.put_nowait((None, {**(event or error_event(error, name)), **_billed(call)}))
        self.results[name] = {
            "status": "error",
            "request_id": call.request_id,
            "error": {"status": error.status, "code": error.code, "message": error.message},
        }

    async def _run_model(self, name: str) -> None:
        request = self.request
        decision = request.decisions.get(name)
        meter = StreamMeter(self.started)
        call = RelayCall(
            request_id=new_request_id(),
            ctx=request.ctx,
            endpoint="compare",
            model=decision.model if decision else name,
            requested_model=name,
            route_label=decision.route if decision else "default",
            fallbacks=decision.fallbacks if decision else (),
            body=request.bodies[name],
            stream=True,
            client_wants_usage=True,
            meter=meter,
            dialect=CompareFormat(name="compare", model=name, meter=meter),
            run_id=self.run_id,
            request=request.parsed.get(name),
        )
        try:
            try:
                cache_plan(call, request.cache_directive)
                await call_admit(call, request.body_size)
            except GatewayError as error:
                if refusal_count(error, call.ctx):
                    refusal_record(call, error)  # refused by the key's limits or budgets: booked as such
                self._failed(name, error, call)
                return
            start = {"type": "start", "model": name, "request_id": call.request_id, "cache": call.cache_result}
            self._queue.put_nowait((None, start))
            if call.cache_hit:
                events = cache_replay(call, call.cache_answer)
            else:
                try:
                    events = await relay_open(call)  # records the call itself when it fails or is cancelled
                except GatewayError as error:
                    self._failed(name, error, call)
                    return
            # The relay's iterator closes the upstream and records usage however it ends.
            room = asyncio.Semaphore(BUFFERED_EVENTS_PER_MODEL)
            self._rooms.append(room)
            failure, tool_calls = None, {}
            async with aclosing(events):
                async for event in events:
                    if event.get("type") == "error":
                        # Sent once the relay has booked the call, with what its record bills.
                        failure = event
                        continue
                    if event.get("type") == "tool_call":
                        _tool_calls_collect(tool_calls, event)
                    # A reader that stops reading stops this model a few events later: the relay stops
                    # reading the upstream, whose socket then fills and holds the provider back.
                    await room.acquire()
                    if self._stopping:
                        raise asyncio.CancelledError
                    self._queue.put_nowait((room, event))
            if call.status >= 400 or failure is not None:
                message = (failure or {}).get("message") or "the upstream failed mid-stream"
                status = call.status if call.status >= 400 else 502
                error = GatewayError(status, call.error_type or "upstream_stream_error", message)
                self._failed(name, error, call, failure)
                return
            done = _done_event(call)
            if tool_calls:
                done["tool_calls"] = [tool_calls[index] for index in sorted(tool_calls)]
            self._queue.put_nowait((None, done))
            self.results[name] = {
                "status": "done",
                "request_id": call.request_id,
                "finish_reason": done["finish_reason"],
                "usage": done["usage"],
            }
        except asyncio.CancelledError:
            cancelled = GatewayError(499, "cancelled", "the run was cancelled before this model finished")
            self._queue.put_nowait((None, {**error_event(cancelled, name), **_billed(call)}))
            self.results[name] = {"status": "cancelled", "request_id": call.request_id}
            raise
        except Exception:
            logger.exception("compare run %s: model %s failed unexpectedly", self.run_id, name)
            self._failed(name, GatewayError(500, "internal_error", "the gateway failed to run this model"), call)
        finally:
            if call.admission is not None and call.admission.allowed and call.ending is None:
                # Admitted but stopped before the relay took the call over: it still ends, once.
                call_end(call, status=499, error_type="client_disconnected")
