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
import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from accounts.context import KeyContext
from accounts.limits import Admission, limits_lease_refresh, limits_settle
from accounts.usage import usage_record
from aigateway.errors import GatewayError
from providers.dialects import DIALECTS
from providers.dialects.base import Dialect
from providers.dialects.canonical import (
    ChatRequest,
    End,
    Finish,
    MalformedEvent,
    StreamError,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from providers.dialects.openai import openai as openai_dialect
from providers.dialects.sse import SSEDecoder, SSEvent
from providers.routing import Route, router
from providers.transforms import transforms_apply_body, transforms_apply_headers, transforms_describe
from providers.upstream import upstream_client
from streaming.meter import StreamMeter
from streaming.tokens import count_prompt_tokens, count_tokens, estimate_request_tokens

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
    # The client's query string (e.g. Anthropic's `?beta=true`), for a provider of the client's own dialect.
    upstream_query: str = ""
    admission: Admission | None = None
    route: Route | None = None
    attempts: int = 0
    status: int = 200
    error_type: str = ""
    usage: Usage | None = None
    # Prompt tokens reported before the final usage (Anthropic's message_start), kept in case it never comes.
    prompt_tokens_reported: int | None = None
    finish_reason: str | None = None
    completion_parts: list[str] = field(default_factory=list)
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
        return headers

    def canonical(self) -> ChatRequest:
        """The client's request in the canonical model, parsed once, when a translation needs it."""
        if self.request is None:
            self.request = self.dialect.parse_request(self.body)
        return self.request


def spawn(coro) -> None:
    """Run cleanup to completion even if the request task is being cancelled."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


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
    provider reported none (the answer was cut short, or the provider never counts)."""
    if call.usage is not None:
        return call.usage, False
    if call.route is None:
        return Usage(), False
    prompt = call.prompt_tokens_reported
    if prompt is None:
        system = _system_text(call.body.get("system", call.body.get("instructions")))
        prompt = count_prompt_tokens(_prompt_messages(call.body), system)
    return Usage(prompt_tokens=prompt, completion_tokens=count_tokens("".join(call.completion_parts))), True


async def call_finish(call: RelayCall) -> None:
    """Settle the limits lease and push the usage event; never raises."""
    usage, estimated = call_usage(call)
    summary = call.meter.summary()
    event = {
        "request_id": call.request_id,
        "api_key_id": call.ctx.key_id,
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
        "tokens_estimated": estimated,
        "attempts": call.attempts,
        "run_id": call.run_id,
        "created_at": time.time(),
        **summary,
    }
    # Both round trips at once: the client of a non-streamed request is waiting on them.
    await asyncio.gather(_settle(call, usage), _record(call.request_id, event))


async def _settle(call: RelayCall, usage: Usage) -> None:
    if call.admission is None or not call.admission.allowed:
        return
    actual = usage.prompt_tokens + usage.completion_tokens if call.route is not None else 0
    try:
        await limits_settle(call.ctx, call.admission, actual_tokens=actual)
    except Exception as exc:
        logger.warning("limits settle failed for %s: %s", call.request_id, type(exc).__name__)


async def _record(request_id: str, event: dict) -> None:
    try:
        await usage_record(event)
    except Exception as exc:
        logger.warning("usage record failed for %s: %s", request_id, type(exc).__name__)


class UpstreamFailure(Exception):
    """A deployment failed before the first byte; the next one may be tried."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _transport_reason(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, httpx.TimeoutException):
        return 504, f"upstream timed out ({type(exc).__name__})"
    return 502, f"upstream connection failed ({type(exc).__name__})"


def _same_dialect(call: RelayCall, upstream: Dialect) -> bool:
    return upstream.name == call.dialect.name


def _serves(call: RelayCall, route: Route) -> bool:
    return call.operation == "chat" or route.provider.dialect == call.dialect.name


def _upstream_body(call: RelayCall, route: Route, upstream: Dialect) -> bytes:
    options = {
        "upstream_model": route.upstream_model,
        "stream": call.stream,
        "max_output_tokens": call.ctx.max_output_tokens,
    }
    if call.operation == "embeddings":
        # Nothing to cap or force: the body goes as it came, under the deployment's model name.
        body = {**call.body, "model": route.upstream_model}
    elif _same_dialect(call, upstream):
        body = upstream.prepare_chat(call.body, **options)
    else:
        body = upstream.build_request(call.canonical(), **options)
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


async def _open(call: RelayCall, route: Route, payload: bytes, upstream: Dialect) -> httpx.Response:
    provider = route.provider
    client = upstream_client(provider)
    extra = dict(provider.extra_headers)
    url = provider.base_url + upstream.paths[call.operation]
    if _same_dialect(call, upstream):
        extra = {**call.upstream_headers, **extra}
        if call.upstream_query:
            url += "?" + call.upstream_query
    headers = upstream.upstream_headers(provider.api_key, extra)
    if provider.request_transforms:
        headers = transforms_apply_headers(provider.request_transforms, headers)
    request = client.build_request("POST", url, content=payload, headers=headers)
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise UpstreamFailure(*_transport_reason(exc)) from None
    call.meter.upstream_byte()
    return response


async def _upstream_client_error(response: httpx.Response, upstream: Dialect) -> GatewayError:
    """A 4xx from the provider that failover cannot fix: pass its message on, in our shape."""
    try:
        raw = await response.aread()
        message = upstream.upstream_error_message(orjson.loads(raw)) if raw else None
    except (orjson.JSONDecodeError, httpx.TransportError):
        message = None
    finally:
        await response.aclose()
    status = response.status_code
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
        return StreamingHttpResponse(result, headers={**STREAM_HEADERS, **call.headers()})
    return HttpResponse(result, content_type="application/json", headers=call.headers())


async def relay_open(call: RelayCall):
    """Open the model's deployments in order until one answers; return what the client gets.

    Streamed: an async iterator of what the client's dialect renders for each upstream event (SSE
    body chunks for the HTTP doors, event dicts for compare), which closes the upstream and records
    usage however it ends. Not streamed: the response body (the caller records the call once the
    client has it). Raises GatewayError when no deployment answered; a call that ends here, failed or
    cancelled (client gone), is recorded here."""
    try:
        return await _open_with_failover(call)
    except GatewayError as error:
        call.status, call.error_type = error.status, error.code
        await call_finish(call)
        raise
    except BaseException:
        if not call.finished:
            call.status, call.error_type = 499, "client_disconnected"
        spawn(call_finish(call))
        raise


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
    status = 503 if last.status == 429 else last.status
    tried = "', '".join((first, *call.fallbacks))
    raise GatewayError(status, "upstream_unavailable", f"all deployments of '{tried}' failed; last: {last.reason}")


async def _try_deployments(call: RelayCall, candidates: list[Route]):
    """Open the first deployment that answers; UpstreamFailure (the last one's) when none does."""
    last: UpstreamFailure | None = None
    for route in candidates:
        upstream = DIALECTS.get(route.provider.dialect)
        if upstream is None:
            last = UpstreamFailure(502, f"deployment {route.provider.name} speaks unknown {route.provider.dialect}")
            continue
        call.attempts += 1
        call.route = route
        payload = _upstream_body(call, route, upstream)
        try:
            response = await _open(call, route, payload, upstream)
            if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
                await response.aclose()
                raise UpstreamFailure(
                    502 if response.status_code != 429 else 429, f"upstream returned HTTP {response.status_code}"
                )
            if response.status_code >= 400:
                raise await _upstream_client_error(response, upstream)
            if call.stream:
                result = await _stream_start(call, response, upstream)
            else:
                result = await _complete(call, response, upstream)
        except UpstreamFailure as failure:
            logger.info("request %s: deployment %s failed: %s", call.request_id, route.provider.name, failure.reason)
            await router.record_failure(route.provider, failure.reason)
            last = failure
            continue
        await router.record_success(route.provider)
        return result
    raise last


async def _complete(call: RelayCall, response: httpx.Response, upstream: Dialect) -> bytes:
    try:
        raw = await response.aread()
    except httpx.TransportError as exc:
        raise UpstreamFailure(*_transport_reason(exc)) from None
    finally:
        await response.aclose()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(502, "upstream returned a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamFailure(502, "upstream returned an unexpected JSON body")
    if _same_dialect(call, upstream):
        data["model"] = call.response_model
        call.usage = upstream.response_usage(data)
        if call.usage is None:
            call.completion_parts.append(upstream.response_text(data))
    else:
        reply = upstream.parse_response(data)
        call.usage = reply.usage
        if call.usage is None:
            call.completion_parts.append(reply.text())
        data = call.dialect.render_response(reply, model=call.response_model)
    body = orjson.dumps(data)
    call.meter.sent()
    call.finished = True
    return body


def _account(call: RelayCall, events: list[StreamEvent]) -> None:
    """What the usage record learns from one upstream event."""
    for event in events:
        match event:
            case TextDelta(text=text) | ThinkingDelta(text=text) if text:
                call.completion_parts.append(text)
            case ToolCallDelta():
                call.completion_parts.append((event.name or "") + event.arguments)
            case UsageReport():
                if event.prompt_tokens is not None:
                    call.prompt_tokens_reported = event.prompt_tokens
                if event.completion_tokens is not None:
                    call.usage = Usage(
                        call.prompt_tokens_reported or 0, event.completion_tokens, event.cached_tokens or 0
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
            self.renderer = None
        else:
            self.passthrough = None
            # About four bytes of JSON per token: cheap, and corrected once the provider reports usage.
            estimate = call.body_size // 4
            self.renderer = call.dialect.stream_renderer(**options, prompt_estimate=estimate)
        # The provider said the stream is over: it completed, or it reported an error.
        self.complete = False

    def feed(self, event: SSEvent) -> list[bytes]:
        try:
            payload, events = self.parser.feed(event.event, event.data)
        except MalformedEvent:
            logger.info("request %s: dropped a malformed upstream event", self.call.request_id)
            return []
        _account(self.call, events)
        if any(isinstance(e, End | StreamError) for e in events):
            self.complete = True
        if self.passthrough is not None:
            out = self.passthrough.forward(event.event, payload)
            return [] if out is None else [out]
        rendered: list[bytes] = []
        for canonical_event in events:
            rendered.extend(self.renderer.render(canonical_event))
        return rendered

    def close(self) -> list[bytes]:
        return (self.passthrough or self.renderer).close()


async def _stream_start(call: RelayCall, response: httpx.Response, upstream: Dialect):
    """Read up to the first upstream event (still failover-able), then hand the stream to the client."""
    decoder = SSEDecoder()
    chunks = response.aiter_bytes()
    first: list = []
    try:
        while not first:
            chunk = await anext(chunks)
            first = decoder.feed(chunk)
    except StopAsyncIteration:
        await response.aclose()
        raise UpstreamFailure(502, "upstream closed the stream before the first event") from None
    except httpx.TransportError as exc:
        await response.aclose()
        raise UpstreamFailure(*_transport_reason(exc)) from None
    except BaseException:
        await response.aclose()
        raise
    bridge = StreamBridge(call, upstream)
    return _stream_body(call, response, chunks, decoder, first, bridge)


async def _stream_body(call: RelayCall, response: httpx.Response, chunks, decoder, first: list, bridge: StreamBridge):
    ended = False
    lease_renew_every = settings.GATEWAY_LEASE_TTL_SECONDS / 3
    lease_renew_at = time.monotonic() + lease_renew_every
    try:
        pending = first
        while True:
            if call.admission is not None and call.admission.lease_id and time.monotonic() > lease_renew_at:
                lease_renew_at = time.monotonic() + lease_renew_every
                await limits_lease_refresh(call.ctx, call.admission)
            for event in pending:
                for out in bridge.feed(event):
                    call.meter.sent()
                    yield out
                if bridge.complete:
                    break
            if bridge.complete or ended:
                break
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                pending, ended = decoder.flush(), True
                continue
            pending = decoder.feed(chunk)
        if not bridge.complete and call.finish_reason is None:
            raise httpx.RemoteProtocolError("upstream ended the stream before it was complete")
        for out in bridge.close():
            call.meter.sent()
            yield out
        call.finished = True
    except httpx.TransportError as exc:
        call.status, call.error_type = 502, "upstream_stream_error"
        reason = _transport_reason(exc)[1] if not isinstance(exc, httpx.RemoteProtocolError) else str(exc)
        error = GatewayError(502, "upstream_stream_error", f"upstream failed mid-stream: {reason}")
        call.meter.sent()
        yield call.dialect.stream_error_event(error)
        call.finished = True
    finally:
        if not call.finished:
            call.status, call.error_type = 499, "client_disconnected"
        # Closing the upstream response drops its connection: the provider stops generating.
        await asyncio.shield(response.aclose())
        spawn(call_finish(call))


async def relay_count_tokens(call: RelayCall) -> dict:
    """Anthropic's count_tokens for `call.body`: asked of the model's first Anthropic-dialect deployment
    that answers, else the gateway's estimate over the translated request (tools included)."""
    for route in await router.candidates(call.model):
        upstream = DIALECTS.get(route.provider.dialect)
        path = upstream.paths.get("count_tokens") if upstream is not None else None
        if path is None or not _same_dialect(call, upstream):
            continue
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
            response = await upstream_client(route.provider).post(url, content=payload, headers=headers)
        except httpx.TransportError as exc:
            logger.info("request %s: count_tokens at %s failed: %s", call.request_id, route.provider.name, exc)
            continue
        if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
            continue
        if response.status_code >= 400:
            raise await _upstream_client_error(response, upstream)
        try:
            counted = orjson.loads(response.content).get("input_tokens")
        except (orjson.JSONDecodeError, AttributeError):
            counted = None
        if isinstance(counted, int) and not isinstance(counted, bool):
            call.route = route
            return {"input_tokens": counted}
    return {"input_tokens": estimate_request_tokens(call.canonical())}
