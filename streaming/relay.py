"""The relay engine: admit, route, open the upstream with failover, forward every event at once.

One relay serves every client dialect against every upstream dialect. Same dialect in and out:
the body and each event pass through with only the model rewritten. Different dialects: the
client's request goes through the canonical model into the provider's format, and each upstream
event is translated back the moment it arrives.

Failover happens only before the first upstream byte reaches the client. After that an upstream
failure becomes an error event in the stream, and the stream ends cleanly. Whatever happens -
success, error, client gone - the limits lease is settled and one usage event is pushed.
"""

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime

import httpx
import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from accounts.auth import key_still_usable
from accounts.budgets import to_units
from accounts.context import KeyContext
from accounts.limits import Admission, limits_settle_send, limits_settle_sent
from accounts.request_log import request_log_entry
from accounts.usage import LOST_ERROR_TYPE, LOST_STATUS, usage_record
from aigateway.errors import GatewayError, bad_request
from aigateway.logs import request_log
from aigateway.metrics import metrics_log_redactions, metrics_record, metrics_stream_closed, metrics_stream_opened
from aigateway.shutdown import shutdown_deadline, shutdown_passed, shutdown_waiting_add, shutdown_waiting_done
from providers.dialects import DIALECTS
from providers.dialects.base import Dialect
from providers.dialects.canonical import (
    TOKEN_COUNT_MAX,
    ChatRequest,
    End,
    Finish,
    MalformedEvent,
    MalformedValue,
    StreamError,
    StreamEvent,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from providers.dialects.namespaces import client_names, client_parts
from providers.dialects.openai import openai as openai_dialect
from providers.dialects.replay import Answer
from providers.dialects.sse import SSEDecoder, SSEEventTooLarge, SSEvent
from providers.dialects.tool_ids import tool_ids_restored
from providers.extra_headers import extra_headers_problem
from providers.redaction import upstream_message_redact
from providers.routing import Route, router
from providers.transforms import transforms_apply_body, transforms_apply_headers, transforms_describe
from providers.upstream import PoolExhausted, UpstreamBodyTooLarge, upstream_body_read, upstream_open
from streaming.cache import cache_answer_from_reply, cache_answer_read, cache_collect, cache_store
from streaming.inflight import in_flight
from streaming.meter import StreamMeter
from streaming.tokens import count_prompt_tokens, count_tokens, estimate_request_tokens
from streaming.tracing import trace_attempt_answered, trace_attempt_failed, trace_attempt_start, trace_call_finish

logger = logging.getLogger(__name__)

STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_RETRYABLE_STATUS = {408, 409, 425, 429}
_background: set[asyncio.Task] = set()


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


@dataclass
class RelayCall:
    """One client request on its way through the gateway."""

    request_id: str
    ctx: KeyContext
    endpoint: str
    model: str
    body: dict
    stream: bool
    client_wants_usage: bool
    meter: StreamMeter
    # The client's wire format: how the body reads and how the answer and errors must look.
    dialect: Dialect = field(default_factory=lambda: openai_dialect)
    # Client headers meant for a provider of the client's own dialect (e.g. anthropic-beta).
    upstream_headers: dict[str, str] = field(default_factory=dict)
    # The client's query parameters a provider of its own dialect may get (Anthropic's `beta`; see views).
    upstream_query: str = ""
    admission: Admission | None = None
    # Storing the started marker of a key without limits (admission stores the others'), in the background
    # while the upstream is opened; the client gets no byte before it has landed.
    marker_stored: asyncio.Future | None = None
    route: Route | None = None
    attempts: int = 0
    status: int = 200
    error_type: str = ""
    usage: Usage | None = None
    # Prompt tokens reported before the final usage (Anthropic's message_start), kept in case it never comes.
    prompt_tokens_reported: int | None = None
    # The cache reads and writes reported with it: a call cut short is still billed them at their own prices.
    prompt_cache_reported: tuple[int, int] = (0, 0)
    finish_reason: str | None = None
    completion_parts: list[str] = field(default_factory=list)
    # The reasoning text relayed (also in completion_parts), counted when the provider reports no reasoning tokens.
    reasoning_parts: list[str] = field(default_factory=list)
    finished: bool = False
    request: ChatRequest | None = None
    # The compare run this call is one model of ("" outside /v1/compare and the playground).
    run_id: str = ""
    # Routing: the model name the client sent (when an alias, rule or fallback serves another), how the
    # model was chosen, and the models to try when every deployment of `model` fails before the first byte.
    requested_model: str = ""
    route_label: str = "default"
    fallbacks: tuple[str, ...] = ()
    # What is asked of the provider: "chat", or an OpenAI-only endpoint relayed as it is ("embeddings",
    # "completions"), which only deployments speaking the client's dialect can serve.
    operation: str = "chat"
    # Size of the client's body: the one prompt estimate admission, routing and renderers share.
    body_size: int = 0
    # The output a budget reserved for (sent upstream as the cap, so the cost never passes the reservation).
    output_cap: int | None = None
    # The client started reading the streamed body (its cleanup runs however it ends).
    body_started: bool = False
    # Why each deployment tried before the first byte failed; whether one answered.
    failures: list = field(default_factory=list)
    answered: bool = False
    # The call's one finish (see call_end), once started.
    ending: asyncio.Task | None = None
    # When (time.monotonic()) the deployment being called must have finished: its timeout_total from the
    # moment it was opened (None: no cap).
    deadline: float | None = None
    # The response cache (streaming.cache): its plan for this call, what it did ("hit", "miss", "bypass"; ""
    # where it does not apply), the answer's content events kept for storing, and for a hit, that the
    # original's tokens were the gateway's count and what the original cost.
    cache: object | None = None
    cache_result: str = ""
    cache_events: list | None = None
    # A complete answer kept as it came, read into cache_events once the client has it (streaming.cache).
    cache_reply: tuple | None = None
    cache_text_bytes: int = 0
    cache_hit: bool = False
    cache_answer: object | None = None
    hit_estimated: bool = False
    cost_saved: str = "0"
    # Its trace (streaming.tracing.CallTrace) once admitted, when tracing is on.
    trace: object | None = None
    # Built-in tools left out of the request the deployment being tried got (it offers none of them).
    dropped_tools: tuple[str, ...] = ()
    # How the call is booked when it is stopped before it completes: its client left, or (a resumable or
    # background stream, see streaming.resumable) it was cancelled.
    stop_error_type: str = "client_disconnected"
    # A Responses call to be stored (streaming.responses_store's plan), the fields its response object gets
    # from the gateway (the id GET /v1/responses/{id} knows, `store`, `previous_response_id`, `background`),
    # and the response object the client got, captured for the store.
    store: object | None = None
    response_fields: dict = field(default_factory=dict)
    response_object: dict | None = None

    @property
    def response_model(self) -> str:
        """The model name the client's answer carries: the one it asked for, unless set otherwise."""
        if self.requested_model and not settings.GATEWAY_RESPONSE_MODEL_SERVED:
            return self.requested_model
        return self.model

    def headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.request_id}
        if self.route is not None:
            headers["x-gateway-provider"] = self.route.provider.name
            headers["x-gateway-model"] = self.model
            headers["x-gateway-route"] = f"{self.route_label}; attempts={self.attempts}"
        if self.admission is not None:
            headers.update(self.admission.headers_for(self.dialect.name))
        if self.cache_result:
            headers["x-gateway-cache"] = self.cache_result
        if self.dropped_tools:
            headers["x-gateway-dropped-tools"] = ", ".join(self.dropped_tools)
        return headers

    def canonical(self) -> ChatRequest:
        """The client's request in the canonical model, parsed once, when a translation needs it."""
        if self.request is None:
            self.request = self.dialect.parse_request(self.body)
        return self.request


def spawn(coro) -> asyncio.Task:
    """Run cleanup to completion even if the request task is being cancelled."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def background_drain(timeout: float = 5.0) -> None:
    """Wait for spawned cleanups (lease settles, usage pushes) of this event loop to finish, so a
    shutting-down process does not cancel them halfway."""
    loop = asyncio.get_running_loop()
    pending = [task for task in _background if task.get_loop() is loop and not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


def _system_text(system) -> str | None:
    if isinstance(system, list):
        return "\n".join(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
    return system if isinstance(system, str) else None


def _prompt_messages(body: dict):
    """The conversation of a chat body, or a Responses body's input (its message items read alike)."""
    if "messages" in body:
        return body["messages"]
    items = body.get("input")
    return [{"role": "user", "content": items}] if isinstance(items, str) else items


def call_usage(call: RelayCall) -> tuple[Usage, bool]:
    """The tokens the call is billed for, and whether they are the gateway's estimate because the
    provider reported none (the answer was cut short, or the provider never counts). A report with a count
    above TOKEN_COUNT_MAX is counted as that and marked estimated too: it is not what the provider said."""
    if call.usage is not None:
        return _reasoning_counted(call, call.usage), call.usage.clamped
    if not call.answered:
        # No deployment answered (or the client left first): the provider did no work to bill.
        return Usage(), False
    prompt, (cached, written) = call.prompt_tokens_reported, call.prompt_cache_reported
    if prompt is None:
        system = _system_text(call.body.get("system", call.body.get("instructions")))
        prompt, cached, written = count_prompt_tokens(_prompt_messages(call.body), system), 0, 0
    completion = count_tokens("".join(call.completion_parts))
    return _reasoning_counted(call, Usage(prompt, completion, cached, written)), True


def _reasoning_counted(call: RelayCall, usage: Usage) -> Usage:
    """`usage` with the gateway's count of the reasoning text relayed when the provider counted none (Anthropic
    never does): a part of completion_tokens, never more, billed within it and not again."""
    if usage.reasoning_tokens is None and call.reasoning_parts:
        usage.reasoning_tokens = min(count_tokens("".join(call.reasoning_parts)), usage.completion_tokens)
    return usage


def call_cost(call: RelayCall, usage: Usage) -> Decimal:
    """What the call costs at the prices of the deployment that served it, as they stood when it ran (the
    route table's); 0 when none served."""
    return call.route.prices.cost(usage) if call.route is not None else Decimal(0)


def call_event(call: RelayCall, usage: Usage, estimated: bool) -> dict:
    event = {
        "request_id": call.request_id,
        "api_key_id": call.ctx.key_id,
        "user_id": call.ctx.owner_id,
        "team_id": call.ctx.team_id,
        "model": call.model,
        "requested_model": call.requested_model if call.requested_model != call.model else "",
        "route": call.route_label,
        "provider": call.route.provider.name if call.route else "",
        "deployment_id": call.route.deployment_id if call.route else None,
        "endpoint": call.endpoint,
        "stream": call.stream,
        "status_code": call.status,
        "error_type": call.error_type,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "tokens_estimated": estimated,
        "attempts": call.attempts,
        "run_id": call.run_id,
        "created_at": time.time(),
    }
    if call.dropped_tools:
        event["dropped_tools"] = list(call.dropped_tools)
    if call.route is not None:
        # Priced now, at the prices in force when the call ran: a later price change never rewrites it. A
        # started marker (no route yet) carries none: its record is priced by the flush.
        event["cost"] = str(call_cost(call, usage))
    elif call.cache_hit:
        # Answered from the response cache: no provider was paid; the original answer's cost was saved.
        event.update(cost="0", cache_hit=True, cost_saved=call.cost_saved, tokens_estimated=call.hit_estimated)
    return event


def call_marker(call: RelayCall) -> bytes:
    """The "started" marker stored at admission: the usage event the books get if the process dies
    before this call finishes (status "lost", the prompt estimated from the body's size)."""
    event = call_event(call, Usage(prompt_tokens=call.body_size // 4), True)
    event["status_code"], event["error_type"] = LOST_STATUS, LOST_ERROR_TYPE
    return orjson.dumps(event)


def call_end(call: RelayCall, *, status: int | None = None, error_type: str = "", cleanup=None) -> asyncio.Task:
    """The one way a call finishes, whatever ended it (the answer sent, an error, the client gone, a
    process stopping): `cleanup` (closing the upstream) and then call_finish, run exactly once, in a task
    of its own that a cancellation of the caller cannot interrupt. `status`/`error_type` say how it ended
    when it did not complete. Later calls return the first one's task. Await it (shielded) to wait for it."""
    if call.ending is not None:
        return call.ending
    if status is not None and not call.finished:
        call.status, call.error_type = status, error_type
    call.ending = spawn(_call_end(call, cleanup))
    return call.ending


async def _call_end(call: RelayCall, cleanup) -> None:
    in_flight().discard(call)
    try:
        if cleanup is not None:
            await cleanup()
    except Exception as exc:
        logger.info("request %s: closing the upstream failed: %s", call.request_id, type(exc).__name__)
    finally:
        await call_finish(call)


def call_in_flight(call: RelayCall) -> None:
    """An admitted call: its lease and marker are renewed on a timer until call_end."""
    in_flight().add(call)


async def call_finish(call: RelayCall) -> None:
    """Settle the limits lease, push the usage event, count it in metrics and log it; never raises.
    Called by call_end only."""
    usage, estimated = call_usage(call)
    if usage.clamped:
        logger.warning(
            "request %s: %s reported a token count above the maximum (%d); counted as the maximum",
            call.request_id,
            call.route.provider.name if call.route else "the provider",
            TOKEN_COUNT_MAX,
        )
    event = call_event(call, usage, estimated)
    event.update(call.meter.summary())
    trace_call_finish(call, event)
    try:
        metrics_record(event, _upstream_errors(call))
        request_log(event, key_prefix=call.ctx.key_prefix, body=call.body if settings.GATEWAY_LOG_BODIES else None)
    except Exception as exc:
        logger.warning("metrics or request log failed for %s: %s", call.request_id, type(exc).__name__)
    if call.ctx.log_bodies != "off":
        # The request log's record rides with the usage event (written by the same flush). A large body's
        # redaction takes milliseconds: in a thread, so the event loop keeps serving meanwhile.
        if call.body_size > LOG_INLINE_MAX_BYTES:
            entry = await asyncio.to_thread(call_log_entry, call, usage)
        else:
            entry = call_log_entry(call, usage)
        if entry is not None:
            event["log"] = entry
            metrics_log_redactions(call.ctx.log_bodies, entry["redactions"])
    stored = None
    if call.store is not None:
        try:
            # Compressing a long conversation takes milliseconds: in a thread, as the request log's record.
            if call.body_size > LOG_INLINE_MAX_BYTES:
                stored = await asyncio.to_thread(call.store.entry, call)
            else:
                stored = call.store.entry(call)
        except Exception:
            logger.exception("request %s: its stored response could not be made", call.request_id)
        if stored is not None:
            event["stored_response"] = stored
    # Queued together, so both ride in one Redis round trip (no task per step).
    settling = _settle_send(call, usage, event.get("cost"))
    await _record(call.request_id, event)
    if stored is not None:
        try:
            # Readable at once (GET /v1/responses/{id}), before the flush writes it to the database.
            await call.store.keep(stored)
        except Exception as exc:
            logger.warning("request %s: stored response not kept in Redis: %s", call.request_id, type(exc).__name__)
    try:
        await limits_settle_sent(settling)
    except Exception as exc:
        logger.warning("limits settle failed for %s: %s", call.request_id, type(exc).__name__)
    if call.cache_events is not None:
        # After the books, off the client's path (a complete answer is returned once its call has finished).
        spawn(cache_store(call, usage, estimated, event.get("cost")))


# Request bodies larger than this have their request log record made in a thread (see call_finish).
LOG_INLINE_MAX_BYTES = 64 * 1024


def call_log_entry(call: RelayCall, usage: Usage) -> dict | None:
    """The request log's record of a finished call (accounts.request_log): its request, and for `full` its
    answer as the client got it (assembled from the events a stream sent; what arrived, if it was cut off).
    None if it cannot be made: the call is booked all the same."""
    try:
        answer = None
        if call.ctx.log_bodies == "full":
            answer = _answer_rendered(call, usage)
        secrets = (call.route.provider.api_key,) if call.route is not None else ()
        return request_log_entry(level=call.ctx.log_bodies, request=call.body, answer=answer, secrets=secrets)
    except Exception:
        logger.exception("request %s: its request log record could not be made", call.request_id)
        return None


def _answer_rendered(call: RelayCall, usage: Usage) -> dict | None:
    cache_answer_read(call)
    if call.cache_hit:
        reply = call.cache_answer.response()
    elif call.cache_events:
        reply = Answer(call.cache_events, usage).response()
    else:
        return None
    # A compare model's answer reads as a chat completion (the compare events are the stream's, not an answer).
    dialect = openai_dialect if call.run_id else call.dialect
    return dialect.render_response(reply, model=call.response_model)


def _upstream_errors(call: RelayCall) -> list[tuple[str, str]]:
    """(provider, kind) of each upstream failure the call met: every deployment that failed before the
    first byte, and the one that failed mid-stream."""
    errors = [(failure.provider, failure.kind) for failure in call.failures]
    if call.error_type == "upstream_stream_error" and call.route is not None:
        errors.append((call.route.provider.name, "mid_stream"))
    elif call.error_type == "upstream_timeout" and call.route is not None:
        errors.append((call.route.provider.name, "timeout"))
    return errors


def _settle_send(call: RelayCall, usage: Usage, cost: str | None):
    if call.admission is None or not call.admission.allowed:
        return None
    actual = usage.prompt_tokens + usage.completion_tokens if call.route is not None else 0
    try:
        cost_units = to_units(Decimal(cost)) if cost and call.admission.budget_keys else 0
        return limits_settle_send(call.ctx, call.admission, actual_tokens=actual, cost_units=cost_units)
    except Exception as exc:
        logger.warning("limits settle failed for %s: %s", call.request_id, type(exc).__name__)
        return None


async def _record(request_id: str, event: dict) -> None:
    try:
        await usage_record(event)
    except Exception as exc:
        logger.warning("usage record failed for %s: %s", request_id, type(exc).__name__)


class UpstreamFailure(Exception):
    """A deployment failed before the first byte; the next one may be tried.

    `retry_after`: the upstream's Retry-After (seconds, as sent) when it refused with 429, for the
    client's answer when every deployment did. `provider_fault` is False when the provider did nothing
    wrong (the gateway's own connection pool to it is full): not a failure for its circuit breaker.
    `kind` names the failure in metrics (gateway_upstream_errors_total)."""

    def __init__(
        self,
        status: int,
        reason: str,
        kind: str,
        *,
        retry_after: str | None = None,
        provider_fault: bool = True,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind
        self.retry_after = retry_after
        self.provider_fault = provider_fault
        self.provider = ""


def _transport_failure(exc: Exception) -> UpstreamFailure:
    if isinstance(exc, PoolExhausted):
        return UpstreamFailure(503, str(exc), "pool_exhausted", provider_fault=False)
    if isinstance(exc, SSEEventTooLarge):
        return UpstreamFailure(502, str(exc), "too_large")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailure(504, f"upstream timed out ({type(exc).__name__})", "timeout")
    return UpstreamFailure(502, f"upstream connection failed ({type(exc).__name__})", "connection")


class _MalformedAnswer(Exception):
    """A provider's complete JSON answer holds a value of the wrong type: it answered (and bills for it),
    so the call ends with a 502 and the gateway's estimate instead of trying another deployment."""


def _event_idle_seconds(route: Route) -> float:
    """How long an upstream stream may go without completing an event (and a non-streamed body may take
    after its headers)."""
    return settings.GATEWAY_UPSTREAM_EVENT_IDLE_SECONDS or route.provider.timeout_read


def _total_timeout_failure(route: Route) -> UpstreamFailure:
    return UpstreamFailure(
        504, f"upstream did not finish within the deployment's total timeout of {route.timeout_total:g}s", "timeout"
    )


def _upstream_error_redacted(error: GatewayError, route: Route) -> GatewayError:
    """A provider's error message as the client gets it: without the provider's credentials."""
    error.message = upstream_message_redact(error.message, secrets=(route.provider.api_key,))
    error.args = (error.message,)
    return error


def _retry_after(response: httpx.Response) -> str | None:
    """Seconds the upstream asks us to wait before retrying, as a Retry-After value (None: it said nothing usable)."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return value
    if value:
        try:
            delay = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            delay = None
        if delay is not None:
            return str(max(math.ceil(delay), 0))
    milliseconds = response.headers.get("retry-after-ms", "").strip()
    try:
        return str(max(math.ceil(float(milliseconds) / 1000), 0)) if milliseconds else None
    except ValueError:
        return None


def _same_dialect(call: RelayCall, upstream: Dialect) -> bool:
    return upstream.name == call.dialect.name


def _serves(call: RelayCall, route: Route) -> bool:
    return call.operation == "chat" or route.provider.dialect == call.dialect.name


def _upstream_body(call: RelayCall, route: Route, upstream: Dialect) -> bytes:
    options = {
        "upstream_model": route.upstream_model,
        "stream": call.stream,
        "max_output_tokens": call.output_cap if call.output_cap is not None else call.ctx.max_output_tokens,
    }
    if call.operation == "embeddings":
        # Nothing to cap or force: the body goes as it came, under the deployment's model name.
        body = {**call.body, "model": route.upstream_model}
    elif _same_dialect(call, upstream):
        call.dropped_tools = ()
        body = upstream.prepare_chat(call.body, **options)
    else:
        request = call.canonical()
        call.dropped_tools = _builtin_tools_dropped(request, route)
        # Tool-call ids go back to the provider as it wrote them, not as the client was shown them.
        request = tool_ids_restored(request, client=call.dialect.name, provider=upstream.name)
        body = upstream.build_request(request, **options)
    transforms = route.provider.request_transforms
    if transforms:
        body = transforms_apply_body(transforms, body)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "request %s: provider %s transforms: %s",
                call.request_id,
                route.provider.name,
                transforms_describe(transforms),
            )
    return orjson.dumps(body)


def _builtin_tools_dropped(request: ChatRequest, route: Route) -> tuple[str, ...]:
    """The built-in tools a translated request leaves out (its provider offers none of them), by type; a 400
    naming the first one when the model refuses such requests instead."""
    if not request.builtin_tools:
        return ()
    if route.unsupported_tools == "refuse":
        where, kind = request.builtin_tools[0]
        raise bad_request(
            f"'{where}' is a {kind!r} built-in tool, which this model's provider does not offer "
            "(only function tools are translated)",
            param=where,
        )
    return tuple(dict.fromkeys(kind for _where, kind in request.builtin_tools))


async def _open(call: RelayCall, route: Route, payload: bytes, upstream: Dialect) -> httpx.Response:
    provider = route.provider
    extra = dict(provider.extra_headers)
    url = provider.base_url + upstream.paths[call.operation]
    if _same_dialect(call, upstream):
        extra = {**call.upstream_headers, **extra}
        if call.upstream_query:
            url += "?" + call.upstream_query
    headers = upstream.upstream_headers(provider.api_key, extra)
    if provider.request_transforms:
        headers = transforms_apply_headers(provider.request_transforms, headers)
    headers = trace_attempt_start(call, route, headers)
    try:
        response = await upstream_open(provider, url, payload, headers)
    except httpx.TransportError as exc:
        raise _transport_failure(exc) from None
    call.meter.upstream_byte()
    trace_attempt_answered(call, response.status_code)
    return response


def _body_chunks(response: httpx.Response):
    """The upstream body's chunks as they arrive. Straight from the transport's stream when the body is not
    encoded (the gateway asks for identity): httpx's decoding layers add nothing then but CPU."""
    if "content-encoding" in response.headers:
        return response.aiter_bytes()
    return aiter(response.stream)


async def _upstream_client_error(response: httpx.Response, upstream: Dialect) -> GatewayError:
    """A 4xx from the provider that failover cannot fix: pass its message on, in our shape."""
    status = response.status_code
    try:
        # Read up to GATEWAY_MAX_UPSTREAM_BODY_BYTES, never the whole of whatever the upstream sends.
        raw = await upstream_body_read(response)
        message = upstream.upstream_error_message(orjson.loads(raw)) if raw else None
    except UpstreamBodyTooLarge as exc:
        # An error body past the cap is an upstream gone wrong, not an answer to pass on.
        return GatewayError(
            502, "upstream_error", f"upstream returned HTTP {status} with a body over the {exc.limit}-byte limit"
        )
    except (orjson.JSONDecodeError, httpx.TransportError):
        message = None
    finally:
        await response.aclose()
    if status in (401, 403):
        # The provider refused our credentials: the client's request is fine, ours is not.
        return GatewayError(
            502, "upstream_auth_error", f"upstream provider rejected the gateway's credentials (HTTP {status})"
        )
    return GatewayError(status, "upstream_error", message or f"upstream returned HTTP {status}")


async def relay_chat(call: RelayCall) -> HttpResponse:
    """A chat request (/v1/chat/completions or /v1/messages) as an HTTP response in the client's dialect."""
    result = await relay_open(call)
    if call.stream:
        return stream_response(result, {**STREAM_HEADERS, **call.headers()})
    return HttpResponse(result, content_type="application/json", headers=call.headers())


def stream_response(body, headers: dict[str, str]) -> StreamingHttpResponse:
    """A streamed answer that keeps `body`, the async iterator itself, as `relay_body`: the API handler
    iterates and closes it directly, so its cleanup (upstream closed, call ended) runs the moment the
    client leaves. Closing Django's wrapper around it would leave that to the garbage collector."""
    response = StreamingHttpResponse(body, headers=headers)
    response.relay_body = body
    return response


async def relay_open(call: RelayCall):
    """Open the model's deployments in order until one answers; return what the client gets.

    Streamed: an async iterator of what the client's dialect renders for each upstream event (SSE
    body chunks for the HTTP doors, event dicts for compare), which ends the call (call_end) however it
    ends. Not streamed: the response body, the call ended before it is returned. Raises GatewayError when
    no deployment answered; a call that ends here, failed or cancelled (client gone), is ended here."""
    task = asyncio.current_task()
    shutdown_waiting_add(task)
    try:
        result = await _open_with_failover(call)
        if call.marker_stored is not None and not call.marker_stored.done():
            # Usually stored long before the provider answers; if the process dies from here on, the
            # marker is what records the call.
            await asyncio.shield(call.marker_stored)
        if not call.stream:
            await asyncio.shield(call_end(call))
        return result
    except GatewayError as error:
        await asyncio.shield(call_end(call, status=error.status, error_type=error.code))
        raise
    except asyncio.CancelledError:
        if not shutdown_passed() or task.uncancel() > 0:
            call_end(call, status=499, error_type=call.stop_error_type)
            raise
        # The grace period of a stopping gateway ended before any provider answered: a clean 503.
        error = GatewayError(503, "gateway_shutdown", "the gateway is restarting; retry the request")
        await asyncio.shield(call_end(call, status=error.status, error_type=error.code))
        raise error from None
    except Exception:
        # A gateway defect, not the client: the books show a 500 (the edge logs it and answers 500).
        call_end(call, status=500, error_type="internal_error")
        raise
    except BaseException:
        call_end(call, status=499, error_type="client_disconnected")
        raise
    finally:
        shutdown_waiting_done(task)


async def _open_with_failover(call: RelayCall):
    """The model's deployments in order, then each fallback model's, until one answers."""
    first = call.model
    last: UpstreamFailure | None = None
    deployments = 0
    unsupported = False
    for model in (first, *call.fallbacks):
        candidates = await router.candidates(model)
        if candidates and not any(_serves(call, route) for route in candidates):
            unsupported = True
        candidates = [route for route in candidates if _serves(call, route)]
        if not candidates:
            continue
        if model != first:
            logger.info("request %s: every deployment of %s failed; falling back to %s", call.request_id, first, model)
            call.model, call.route_label = model, f"fallback:{model}"
        deployments += len(candidates)
        try:
            return await _try_deployments(call, candidates)
        except UpstreamFailure as failure:
            last = failure
    if unsupported and not deployments:
        raise GatewayError(
            400,
            "unsupported_endpoint",
            f"model '{first}' has no deployment that offers {call.operation}: its providers speak another API",
        )
    if last is None or not deployments:
        raise GatewayError(503, "no_deployment", f"model '{first}' has no available deployment")
    tried = "', '".join((first, *call.fallbacks))
    if call.failures and all(failure.status == 429 for failure in call.failures):
        # Every deployment is rate-limited: the client may retry once the soonest of them allows it.
        waits = [int(f.retry_after) for f in call.failures if f.retry_after is not None]
        headers = {"retry-after": str(min(waits))} if waits else {}
        raise GatewayError(
            429, "upstream_rate_limited", f"every deployment of '{tried}' is rate-limited upstream", headers=headers
        )
    status = 503 if last.status == 429 else last.status
    raise GatewayError(status, "upstream_unavailable", f"all deployments of '{tried}' failed; last: {last.reason}")


async def _try_deployments(call: RelayCall, candidates: list[Route]):
    """Open the first deployment that answers; UpstreamFailure (the last one's) when none does."""
    last: UpstreamFailure | None = None
    for route in candidates:
        upstream = DIALECTS.get(route.provider.dialect)
        if upstream is None:
            last = UpstreamFailure(
                502, f"deployment {route.provider.name} speaks unknown {route.provider.dialect}", "configuration"
            )
            continue
        problem = extra_headers_problem(route.provider.extra_headers)
        if problem:
            # A row saved before extra headers were checked: the gateway's configuration is at fault, not the
            # provider, whose breaker is left alone; the next deployment is tried.
            logger.warning(
                "request %s: provider %s is misconfigured: %s", call.request_id, route.provider.name, problem
            )
            last = UpstreamFailure(
                502,
                f"provider {route.provider.name} is misconfigured: {problem}",
                "configuration",
                provider_fault=False,
            )
            last.provider = route.provider.name
            call.failures.append(last)
            continue
        call.attempts += 1
        call.route = route
        payload = _upstream_body(call, route, upstream)
        try:
            result = await _attempt(call, route, payload, upstream)
        except UpstreamFailure as failure:
            logger.info("request %s: deployment %s failed: %s", call.request_id, route.provider.name, failure.reason)
            trace_attempt_failed(call, failure)
            if failure.provider_fault:
                await router.record_failure(route, failure.reason)
            failure.provider = route.provider.name
            call.failures.append(failure)
            last = failure
            continue
        except _MalformedAnswer as exc:
            logger.info(
                "request %s: deployment %s answered malformed JSON: %s", call.request_id, route.provider.name, exc
            )
            await router.record_failure(route, "malformed answer")
            failure = UpstreamFailure(502, str(exc), "bad_response")
            failure.provider = route.provider.name
            call.failures.append(failure)
            call.answered = True
            raise GatewayError(502, "upstream_bad_response", f"the provider's answer is malformed: {exc}") from None
        await router.record_success(route)
        call.answered = True
        return result
    raise last


async def _attempt(call: RelayCall, route: Route, payload: bytes, upstream: Dialect):
    """One deployment: open it and read up to what the client gets first (the whole answer, or the stream's
    first event), within the deployment's total timeout (the rest of a stream keeps to it in _stream_body)."""
    total = route.timeout_total
    call.deadline = time.monotonic() + total if total else None
    try:
        async with asyncio.timeout(total) as limit:
            response = await _open(call, route, payload, upstream)
            if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
                await response.aclose()
                if response.status_code == 429:
                    raise UpstreamFailure(
                        429, "upstream rate limit (HTTP 429)", "rate_limited", retry_after=_retry_after(response)
                    )
                raise UpstreamFailure(502, f"upstream returned HTTP {response.status_code}", "http_status")
            if response.status_code >= 400:
                raise _upstream_error_redacted(await _upstream_client_error(response, upstream), route)
            if call.stream:
                return await _stream_start(call, response, upstream)
            return await _complete_within(call, response, upstream, _event_idle_seconds(route))
    except TimeoutError:
        if not limit.expired():
            raise
        raise _total_timeout_failure(route) from None


async def _complete_within(call: RelayCall, response: httpx.Response, upstream: Dialect, idle: float) -> bytes:
    """_complete, the body due within `idle` seconds of its headers: a non-streamed answer is one event."""
    try:
        async with asyncio.timeout(idle) as limit:
            return await _complete(call, response, upstream)
    except TimeoutError:
        if not limit.expired():
            raise
        raise UpstreamFailure(
            504, f"upstream's answer was not complete {idle:g}s after its headers", "timeout"
        ) from None


async def _complete(call: RelayCall, response: httpx.Response, upstream: Dialect) -> bytes:
    # Read up to the cap, never the whole of whatever the upstream sends.
    limit = settings.GATEWAY_MAX_UPSTREAM_BODY_BYTES
    too_large = UpstreamFailure(502, f"upstream response body is larger than the {limit}-byte limit", "too_large")
    parts: list[bytes] = []
    size = 0
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        async for part in _body_chunks(response):
            size += len(part)
            if size > limit:
                raise too_large
            parts.append(part)
    except httpx.TransportError as exc:
        raise _transport_failure(exc) from None
    finally:
        await response.aclose()
    raw = b"".join(parts)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(502, "upstream returned a body that is not JSON", "bad_response") from None
    if not isinstance(data, dict):
        raise UpstreamFailure(502, "upstream returned an unexpected JSON body", "bad_response")
    text = ""
    try:
        if _same_dialect(call, upstream):
            # Read even when the usage makes it unneeded: an answer of the wrong shape is never relayed.
            text = upstream.response_text(data)
            data["model"] = call.response_model
            call.usage = upstream.response_usage(data)
            if call.usage is None:
                call.completion_parts.append(text)
            if call.usage is None or call.usage.reasoning_tokens is None:
                _reasoning_read(call, upstream, data)
            if call.cache_events is not None:
                cache_answer_from_reply(call, upstream, data)
        else:
            reply = upstream.parse_response(data)
            call.usage = reply.usage
            call.reasoning_parts.extend(part.text for part in reply.parts if isinstance(part, Thinking))
            if call.usage is None:
                call.completion_parts.append(reply.text())
            else:
                _reasoning_counted(call, call.usage)  # in the client's usage too
            if call.cache_events is not None:
                cache_answer_from_reply(call, upstream, data, reply)
            if call.request.namespaced_tools:
                reply.parts = client_parts(reply.parts, call.request.namespaced_tools)
            data = call.dialect.render_response(reply, model=call.response_model)
    except MalformedEvent as exc:
        # The gateway's estimate counts what could be read of the answer.
        call.completion_parts.append(text)
        raise _MalformedAnswer(str(exc)) from None
    if call.response_fields:
        data.update(call.response_fields)
    if call.store is not None:
        call.response_object = data
    body = orjson.dumps(data)
    call.meter.sent()
    call.finished = True
    return body


def _reasoning_read(call: RelayCall, upstream: Dialect, data: dict) -> None:
    """The reasoning text of a complete answer passed on as it came, for the record's count when the provider
    reports none; an answer already read that its dialect's parser finds odd costs only this count."""
    try:
        reply = upstream.parse_response(data)
    except MalformedEvent:
        return
    call.reasoning_parts.extend(part.text for part in reply.parts if isinstance(part, Thinking))


def _account(call: RelayCall, events: list[StreamEvent]) -> None:
    """What the usage record learns from one upstream event."""
    for event in events:
        match event:
            case TextDelta(text=text) if text:
                call.completion_parts.append(text)
            case ThinkingDelta(text=text) if text:
                call.completion_parts.append(text)
                call.reasoning_parts.append(text)
            case ToolCallDelta():
                call.completion_parts.append((event.name or "") + event.arguments)
            case UsageReport():
                if event.prompt_tokens is not None:
                    call.prompt_tokens_reported = event.prompt_tokens
                    call.prompt_cache_reported = (event.cached_tokens or 0, event.cache_write_tokens or 0)
                if event.completion_tokens is not None:
                    call.usage = Usage(
                        call.prompt_tokens_reported or 0,
                        event.completion_tokens,
                        event.cached_tokens or 0,
                        event.cache_write_tokens or 0,
                        event.reasoning_tokens,
                        event.clamped,
                    )
            case Finish(reason=reason):
                call.finish_reason = reason
            case StreamError():
                call.status, call.error_type = 502, "upstream_stream_error"


class StreamBridge:
    """One upstream stream on its way to one client: each event is parsed once, accounted for, and
    forwarded (same dialect) or translated (different dialects) into client body chunks."""

    def __init__(self, call: RelayCall, upstream: Dialect) -> None:
        self.call = call
        self.parser = upstream.stream_parser()
        options = {"model": call.response_model, "include_usage": call.client_wants_usage}
        if _same_dialect(call, upstream):
            self.passthrough = call.dialect.stream_passthrough(**options)
            self.passthrough.estimate = self.estimate
            self.renderer = None
        else:
            self.passthrough = None
            # About four bytes of JSON per token: cheap, and corrected once the provider reports usage.
            estimate = call.body_size // 4
            self.renderer = call.dialect.stream_renderer(**options, prompt_estimate=estimate)
        if call.response_fields:
            # A stored Responses answer carries the gateway's id, which GET /v1/responses/{id} knows.
            (self.passthrough or self.renderer).response_fields = call.response_fields
        # The provider said the stream is over: it completed, or it reported an error.
        self.complete = False

    def feed(self, event: SSEvent) -> list[bytes]:
        try:
            payload, events = self.parser.feed(event.event, event.data)
        except MalformedValue as exc:
            # JSON with a value of the wrong type (a count that is text): nothing of it can be trusted.
            raise _UpstreamBadEvent(str(exc)) from None
        except MalformedEvent:
            logger.info("request %s: dropped a malformed upstream event", self.call.request_id)
            return []
        _account(self.call, events)
        if self.call.cache_events is not None:
            cache_collect(self.call, events)
        data = event.data
        if any(isinstance(e, End | StreamError) for e in events):
            self.complete = True
            errors = [e for e in events if isinstance(e, StreamError)]
            if errors:
                payload, data = self._errors_redacted(errors, payload, data)
        if self.passthrough is not None:
            out = self.passthrough.forward(event.event, payload, data)
            return [] if out is None else [out]
        rendered: list[bytes] = []
        if self.call.request.namespaced_tools:
            events = client_names(events, self.call.request.namespaced_tools)
        for canonical_event in events:
            rendered.extend(self.renderer.render(canonical_event))
        return rendered

    def _errors_redacted(self, errors: list[StreamError], payload, data: str):
        """An upstream error event without the provider's credentials: its canonical messages, and the
        event itself (every string in it) when it is passed through; re-encoded only when it changed."""
        secrets = (self.call.route.provider.api_key,) if self.call.route is not None else ()
        for error in errors:
            error.message = upstream_message_redact(error.message, secrets=secrets)
        if self.passthrough is None or payload is None:
            return payload, data
        redacted = _strings_redacted(payload, secrets)
        return (redacted, None) if redacted != payload else (payload, data)

    def estimate(self) -> Usage:
        return call_usage(self.call)[0]

    def close(self) -> list[bytes]:
        if self.passthrough is not None:
            return self.passthrough.close()
        out = []
        if self.call.usage is None:
            # The provider reported no usage: the client's format gets the gateway's count, marked as such.
            usage = self.estimate()
            report = UsageReport(
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                estimated=True,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            )
            out = self.renderer.render(report)
        elif self.call.usage.reasoning_tokens is None and self.call.reasoning_parts:
            # The provider counted no reasoning in what it reported: the client's format gets the gateway's count.
            out = self.renderer.render(UsageReport(reasoning_tokens=self.estimate().reasoning_tokens))
        return out + self.renderer.close()


async def _stream_start(call: RelayCall, response: httpx.Response, upstream: Dialect):
    """Read up to the first upstream event (still failover-able), then hand the stream to the client."""
    decoder = SSEDecoder()
    chunks = _body_chunks(response)
    first: list = []
    # Bytes that never complete an event (one every second, say) keep a read timeout happy forever.
    idle = _event_idle_seconds(call.route)
    try:
        async with asyncio.timeout(idle) as limit:
            while not first:
                chunk = await anext(chunks)
                first = decoder.feed(chunk)
    except StopAsyncIteration:
        await response.aclose()
        raise UpstreamFailure(502, "upstream closed the stream before the first event", "connection") from None
    except httpx.TransportError as exc:
        await response.aclose()
        raise _transport_failure(exc) from None
    except TimeoutError:
        await response.aclose()
        if not limit.expired():
            raise
        raise UpstreamFailure(504, f"upstream completed no event within {idle:g}s", "timeout") from None
    except BaseException:
        await response.aclose()
        raise
    bridge = StreamBridge(call, upstream)
    body = _stream_body(call, response, _UpstreamChunks(chunks), decoder, first, bridge)
    # The client may leave after this returns but before the body is ever iterated: then the body's own
    # cleanup never runs, so the request's task does it when it ends.
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(
            lambda _task: (
                call.body_started
                or call_end(call, status=499, error_type="client_disconnected", cleanup=response.aclose)
            )
        )
    return body


_TIMED_OUT = object()
_ENDED = object()


async def _next_or_end(chunks):
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return _ENDED


class _UpstreamChunks:
    """The upstream's body chunks, awaited with a timeout that does not lose the read in progress (the
    stream keeps going after a keepalive or a shutdown check)."""

    __slots__ = ("chunks", "pending")

    def __init__(self, chunks) -> None:
        self.chunks = chunks
        self.pending: asyncio.Future | None = None

    async def next(self, timeout: float | None):
        """The next chunk, _ENDED at the end, or _TIMED_OUT after `timeout` seconds (None: no limit)."""
        if timeout is None and self.pending is None:
            return await _next_or_end(self.chunks)
        if self.pending is None:
            self.pending = asyncio.ensure_future(_next_or_end(self.chunks))
        done, _ = await asyncio.wait((self.pending,), timeout=timeout)
        if not done:
            return _TIMED_OUT
        pending, self.pending = self.pending, None
        return pending.result()

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            await asyncio.gather(self.pending, return_exceptions=True)
            self.pending = None


def _stream_failure_message(call: RelayCall, exc: Exception) -> str:
    """What the client is told when the provider fails mid-answer (the transport's detail goes to the log)."""
    provider = call.route.provider.name if call.route else "the provider"
    logger.warning("request %s: %s failed mid-stream: %s: %s", call.request_id, provider, type(exc).__name__, exc)
    if isinstance(exc, SSEEventTooLarge):
        return f"{exc}; the answer is incomplete"
    if isinstance(exc, httpx.TimeoutException):
        waited = call.route.provider.timeout_read if call.route else 0
        return f"the provider sent nothing for {waited:g}s mid-stream; the answer is incomplete"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the provider closed the connection mid-stream; the answer is incomplete"
    return "the connection to the provider failed mid-stream; the answer is incomplete"


KEEPALIVE = b": keepalive\n\n"


async def _stream_body(
    call: RelayCall, response: httpx.Response, chunks: _UpstreamChunks, decoder, first: list, bridge: StreamBridge
):
    call.body_started = True
    metrics_stream_opened()
    ended = False
    # Compare calls (run_id set) yield event dicts to their run, which keeps its own stream alive.
    keepalive = None if call.run_id else settings.GATEWAY_SSE_KEEPALIVE_SECONDS or None
    now = time.monotonic()
    keepalive_at = now + keepalive if keepalive else math.inf
    # The key is checked again this often: a key disabled or deleted mid-stream ends its streams.
    check_every = max(settings.GATEWAY_CONFIG_CHECK_SECONDS, KEY_CHECK_MIN_SECONDS)
    check_at = now + check_every
    # A complete event is due this often (bytes that never finish one do not count), and the whole call
    # ends by the deployment's deadline.
    idle = _event_idle_seconds(call.route)
    idle_at = now + idle
    total_at = call.deadline if call.deadline is not None else math.inf
    try:
        pending = first
        while True:
            for event in pending:
                for out in bridge.feed(event):
                    call.meter.sent()
                    if call.store is not None and response_snapshot(call, out):
                        await _stored_before_final(call)
                    yield out
                if bridge.complete:
                    break
            if bridge.complete or ended:
                break
            now = time.monotonic()
            if now >= total_at:
                raise _UpstreamTimedOut(
                    f"the answer passed the deployment's total timeout of {call.route.timeout_total:g}s; "
                    "it is incomplete"
                )
            if now >= idle_at:
                raise _UpstreamTimedOut(f"the provider completed no event for {idle:g}s; the answer is incomplete")
            if now >= check_at:
                check_at = now + check_every
                if not await key_still_usable(call.ctx):
                    raise _KeyRevoked
            deadline = shutdown_deadline()
            if deadline is not None and now >= deadline:
                raise _ShuttingDown
            wait = min(keepalive_at, check_at, deadline or math.inf, idle_at, total_at) - now
            chunk = await chunks.next(max(wait, 0.0))
            if chunk is _TIMED_OUT:
                pending = ()
                now = time.monotonic()
                if now >= keepalive_at and (deadline is None or now < deadline):
                    keepalive_at = now + keepalive
                    yield KEEPALIVE
                continue
            if keepalive:
                keepalive_at = time.monotonic() + keepalive
            if chunk is _ENDED:
                pending, ended = decoder.flush(), True
                continue
            pending = decoder.feed(chunk)
            if pending:
                idle_at = time.monotonic() + idle
        if not bridge.complete and call.finish_reason is None:
            raise httpx.RemoteProtocolError("upstream ended the stream before it was complete")
        for out in bridge.close():
            call.meter.sent()
            if call.store is not None and response_snapshot(call, out):
                await _stored_before_final(call)
            yield out
        call.finished = True
    except (httpx.TransportError, _ShuttingDown, _KeyRevoked, _UpstreamTimedOut, _UpstreamBadEvent) as exc:
        if isinstance(exc, httpx.TransportError):
            error = GatewayError(502, "upstream_stream_error", _stream_failure_message(call, exc))
        elif isinstance(exc, _UpstreamTimedOut | _UpstreamBadEvent):
            error = _stream_upstream_error(call, exc)
        elif isinstance(exc, _ShuttingDown):
            error = GatewayError(503, "gateway_shutdown", "the gateway is restarting; the answer was cut short, retry")
        else:
            error = GatewayError(401, "key_revoked", "the API key was disabled, deleted or expired during this stream")
        call.status, call.error_type = error.status, error.code
        call.meter.sent()
        yield call.dialect.stream_error_event(error)
        call.finished = True
    except Exception:
        # A defect of ours: the client gets an error event and a clean end, the log the traceback.
        logger.exception("request %s: the relay failed mid-stream", call.request_id)
        call.status, call.error_type = 500, "internal_error"
        call.finished = True
        yield call.dialect.stream_error_event(
            GatewayError(500, "internal_error", "the gateway failed while relaying this answer")
        )
    finally:
        metrics_stream_closed()
        # Closing the upstream response drops its connection: the provider stops generating. The call ends
        # in its own task, so a client leaving even now (the last event sent) cannot skip its books.
        ending = call_end(
            call, status=499, error_type=call.stop_error_type, cleanup=lambda: _close_upstream(chunks, response)
        )
        await asyncio.shield(ending)


# The Responses events that carry the whole response object: the last one seen is the stored answer.
_RESPONSE_EVENTS = (
    b"event: response.created\n",
    b"event: response.in_progress\n",
    b"event: response.completed\n",
    b"event: response.incomplete\n",
    b"event: response.failed\n",
)


def response_snapshot(call: RelayCall, out: bytes) -> bool:
    """Keep the response object of a Responses lifecycle event the client got (a few per stream; the other
    events are told apart by their first bytes and never parsed). True when it is the final one."""
    if not out.startswith(_RESPONSE_EVENTS):
        return False
    for line in out.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                response = orjson.loads(line[5:])["response"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return False
            if isinstance(response, dict):
                call.response_object = response
                return response.get("status") in ("completed", "incomplete", "failed")
            return False
    return False


async def _stored_before_final(call: RelayCall) -> None:
    """Keep the stored response readable before the client gets the final event, so a GET sent the moment the
    stream completes finds it (call_finish keeps it again, with the usage event that writes it)."""
    try:
        entry = call.store.entry(call)
        if entry is not None:
            await call.store.keep(entry)
    except Exception as exc:
        logger.warning("request %s: stored response not kept in Redis: %s", call.request_id, type(exc).__name__)


# The shortest interval at which a stream checks that its key is still usable.
KEY_CHECK_MIN_SECONDS = 0.5


class _ShuttingDown(Exception):
    pass


class _KeyRevoked(Exception):
    pass


class _UpstreamBadEvent(Exception):
    """An upstream event with a value of the wrong type; the message names it."""


class _UpstreamTimedOut(Exception):
    """The stream passed the event idle timeout or the deployment's total timeout; the message says which."""


def _stream_upstream_error(call: RelayCall, exc: Exception) -> GatewayError:
    provider = call.route.provider.name if call.route else "the provider"
    logger.warning("request %s: %s mid-stream: %s", call.request_id, provider, exc)
    if isinstance(exc, _UpstreamTimedOut):
        return GatewayError(504, "upstream_timeout", str(exc))
    return GatewayError(502, "upstream_stream_error", f"the provider sent a malformed event: {exc}")


def _strings_redacted(payload, secrets):
    """A parsed upstream event with every credential in its strings redacted. Done on its compact JSON text,
    which the redaction keeps valid (it never takes a quote or a backslash)."""
    text = orjson.dumps(payload).decode()
    redacted = upstream_message_redact(text, secrets=secrets)
    if redacted == text:
        return payload
    try:
        return orjson.loads(redacted)
    except orjson.JSONDecodeError:
        return {"type": "error", "error": {"type": "api_error", "message": "upstream failed mid-stream"}}


async def _close_upstream(chunks: _UpstreamChunks, response: httpx.Response) -> None:
    await chunks.close()
    await response.aclose()


async def relay_count_tokens(call: RelayCall) -> dict:
    """Anthropic's count_tokens for `call.body`: asked of the model's first Anthropic-dialect deployment
    that answers, else the gateway's estimate over the translated request (tools included)."""
    for route in await router.candidates(call.model):
        upstream = DIALECTS.get(route.provider.dialect)
        path = upstream.paths.get("count_tokens") if upstream is not None else None
        if path is None or not _same_dialect(call, upstream):
            continue
        if extra_headers_problem(route.provider.extra_headers):
            continue  # a misconfigured provider (see _try_deployments); the next one or the estimate answers
        url = route.provider.base_url + path
        headers = upstream.upstream_headers(
            route.provider.api_key, {**call.upstream_headers, **dict(route.provider.extra_headers)}
        )
        if route.provider.request_transforms:
            # Headers only: the body rules are written for chat bodies, and count_tokens refuses
            # fields it does not know (max_tokens, temperature).
            headers = transforms_apply_headers(route.provider.request_transforms, headers)
        payload = orjson.dumps({**call.body, "model": route.upstream_model})
        try:
            response = await upstream_open(route.provider, url, payload, headers)
            if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
                await response.aclose()
                continue
            if response.status_code >= 400:
                raise _upstream_error_redacted(await _upstream_client_error(response, upstream), route)
            # Read up to GATEWAY_MAX_UPSTREAM_BODY_BYTES, as every answer the gateway reads whole.
            raw = await upstream_body_read(response)
        except httpx.TransportError as exc:
            logger.info("request %s: count_tokens at %s failed: %s", call.request_id, route.provider.name, exc)
            continue
        try:
            counted = orjson.loads(raw).get("input_tokens")
        except (orjson.JSONDecodeError, AttributeError):
            counted = None
        if isinstance(counted, int) and not isinstance(counted, bool) and 0 <= counted <= TOKEN_COUNT_MAX:
            call.route = route
            return {"input_tokens": counted}
    return {"input_tokens": estimate_request_tokens(call.canonical())}
