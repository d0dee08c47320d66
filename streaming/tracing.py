"""Traces of API requests, after the OpenTelemetry GenAI semantic conventions: a server span per request, a client
span per upstream attempt, the W3C trace context read from the client's `traceparent` and passed to the provider.

A relayed door's span is its call's: named `{gen_ai.operation.name} {gen_ai.request.model}` ("chat gpt-4o"), it
ends when the call finishes (for a stream, when the stream ends) and holds the provider, the models, the tokens
and the gateway's own figures. A compare request's span has one child span per model's call instead.

Each function returns at once when aigateway.tracing set up no tracer: with tracing off a request pays a few
function calls and creates no span. A span holds names, counts, times and ids; never a prompt, an answer, a
header value or a credential. Only the W3C trace context is read and passed on (`traceparent`, `tracestate`), not
baggage: a client's baggage is not the gateway's to hand to a provider.
"""

import asyncio
import logging
import re
from contextvars import ContextVar
from functools import lru_cache
from types import SimpleNamespace
from urllib.parse import urlsplit

from aigateway import tracing as sdk

logger = logging.getLogger(__name__)

# The gateway's operations by their GenAI convention names (gen_ai.operation.name).
OPERATIONS = {"chat": "chat", "embeddings": "embeddings", "completions": "text_completion"}
# The doors whose request is one relay call of that operation.
ENDPOINT_OPERATIONS = {
    "chat.completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "embeddings": "embeddings",
    "completions": "text_completion",
}
# API views whose path holds a value (a model name): the span is named after their route instead.
VIEW_ROUTES = {"model_detail": "/v1/models/{model}", "not_found": ""}
# Well-known gen_ai.provider.name values, by the provider's API host.
KNOWN_HOSTS = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"api\.openai\.com", "openai"),
        (r"api\.anthropic\.com", "anthropic"),
        (r"api\.deepseek\.com", "deepseek"),
        (r"api\.mistral\.ai", "mistral_ai"),
        (r"api\.groq\.com", "groq"),
        (r"api\.x\.ai", "x_ai"),
        (r"api\.perplexity\.ai", "perplexity"),
        (r"api\.cohere\.(com|ai)", "cohere"),
        (r"generativelanguage\.googleapis\.com", "gcp.gemini"),
        (r"([a-z0-9-]+-)?aiplatform\.googleapis\.com", "gcp.vertex_ai"),
        (r"[a-z0-9-]+\.openai\.azure\.com", "azure.ai.openai"),
        (r"[a-z0-9-]+\.services\.ai\.azure\.com", "azure.ai.inference"),
        (r"bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com", "aws.bedrock"),
    )
)
# A client-sent model name as a span name: capped, it is the client's text.
NAME_MODEL_MAX = 128

# The trace of the API request this task serves (set by the edge, read when a call is admitted). Left set for
# the request's task: a streamed answer's calls (compare's models) start while its body is sent, after the view.
_request_trace: ContextVar["RequestTrace | None"] = ContextVar("gateway_request_trace", default=None)


class RequestTrace:
    """One API request's server span. It ends once the request's task is done (the answer sent) and every call
    it holds has finished, whichever comes last."""

    __slots__ = ("span", "calls", "adopted", "task_done", "ended", "status", "error_type")

    def __init__(self, span) -> None:
        self.span = span
        self.calls = 0  # calls started and not finished yet
        self.adopted = False  # a call made this span its own
        self.task_done = False
        self.ended = False
        self.status = 0
        self.error_type = ""

    def done(self, _task=None) -> None:
        self.task_done = True
        if not self.status:
            self.status, self.error_type = 499, "client_disconnected"
        self.end_if_done()

    def end_if_done(self) -> None:
        if self.ended or not self.task_done or self.calls:
            return
        self.ended = True
        try:
            _status_set(self.span, self.status, self.error_type)
            self.span.end()
        except Exception as exc:
            logger.warning("ending a request's span failed: %s", type(exc).__name__)


class CallTrace:
    """One relay call's span (its request's server span, or a child of it), and its upstream attempt in progress."""

    __slots__ = ("span", "request", "own", "attempt", "attempt_status")

    def __init__(self, span, request: RequestTrace, own: bool) -> None:
        self.span = span
        self.request = request
        self.own = own  # a span of its own (a compare model's), ended with the call
        self.attempt = None
        self.attempt_status = 0


@lru_cache(maxsize=1)
def _otel() -> SimpleNamespace:
    """The OpenTelemetry API, imported when the first span is made (never with tracing off)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return SimpleNamespace(
        kinds=trace.SpanKind,
        in_span=trace.set_span_in_context,
        error=lambda description: trace.Status(trace.StatusCode.ERROR, description),
        propagator=TraceContextTextMapPropagator(),
    )


def _error_set(span, error_type: str, description: str = "") -> None:
    span.set_attribute("error.type", error_type)
    span.set_status(_otel().error(description or error_type))


def _status_set(span, status: int, error_type: str) -> None:
    if status >= 400:
        _error_set(span, error_type or str(status))


def request_span_name(method: str, path: str, view: str) -> tuple[str, str]:
    """(span name, http.route) of a request to an API view that is not a relayed call (or not admitted as one)."""
    route = VIEW_ROUTES.get(view, path)
    return (f"{method} {route}" if route else method), route


def genai_operation(endpoint: str | None) -> str | None:
    """gen_ai.operation.name of a door (None: the door is not one GenAI operation, e.g. compare)."""
    if endpoint is None:
        return None
    return ENDPOINT_OPERATIONS.get(endpoint)


@lru_cache(maxsize=256)
def genai_provider_name(base_url: str, name: str) -> str:
    """gen_ai.provider.name of a provider: the conventions' well-known value when its API host is a known
    vendor's, else the provider's own name in the gateway (an OpenAI-compatible server, the simulator)."""
    host = (urlsplit(base_url).hostname or "").lower()
    for pattern, known in KNOWN_HOSTS:
        if pattern.fullmatch(host):
            return known
    return name


@lru_cache(maxsize=256)
def server_address(base_url: str) -> tuple[str, int]:
    """(server.address, server.port) of a provider's base URL."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def request_params(body: dict) -> dict:
    """The GenAI request parameters of a client's body worth a span attribute (numbers only, never content)."""
    attributes = {}
    for field, name in (
        ("max_completion_tokens", "gen_ai.request.max_tokens"),
        ("max_tokens", "gen_ai.request.max_tokens"),
        ("max_output_tokens", "gen_ai.request.max_tokens"),
        ("temperature", "gen_ai.request.temperature"),
        ("top_p", "gen_ai.request.top_p"),
    ):
        value = body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and name not in attributes:
            attributes[name] = value
    return attributes


def request_trace_start(request, *, view: str) -> RequestTrace | None:
    """The server span of an API request (/v1/...), a child of the client's `traceparent` when it sent one."""
    tracer = sdk.tracer
    if tracer is None or not request.path.startswith("/v1/"):
        return None
    task = asyncio.current_task()
    if task is None:
        return None
    try:
        otel = _otel()
        parent = otel.propagator.extract(request.headers) if "traceparent" in request.headers else None
        name, route = request_span_name(request.method, request.path, view)
        attributes = {
            "http.request.method": request.method,
            "url.path": request.path,
            "gateway.request_id": request.gateway_request_id,
        }
        if route != request.path:
            attributes["http.route"] = route
        span = tracer.start_span(name, context=parent, kind=otel.kinds.SERVER, attributes=attributes)
    except Exception as exc:
        logger.warning("starting a request's span failed: %s", type(exc).__name__)
        return None
    trace = RequestTrace(span)
    _request_trace.set(trace)
    task.add_done_callback(trace.done)
    return trace


def request_trace_error(trace: RequestTrace | None, code: str) -> None:
    """The error the request was answered with (GatewayError's code), as its span's error.type."""
    if trace is not None and not trace.adopted:
        trace.error_type = code


def request_trace_answered(trace: RequestTrace | None, request, response, *, endpoint: str | None) -> None:
    """What the view answered: the HTTP status; for a request no call took over (refused, not relayed), the
    name and the key it would have had."""
    if trace is None:
        return
    try:
        span = trace.span
        span.set_attribute("http.response.status_code", response.status_code)
        if not trace.adopted:
            trace.status = response.status_code
            operation = genai_operation(endpoint)
            body = getattr(request, "gateway_body", None)
            model = body.get("model") if isinstance(body, dict) else None
            if operation and isinstance(model, str) and model:
                model = model[:NAME_MODEL_MAX]
                span.update_name(f"{operation} {model}")
                span.set_attributes({"gen_ai.operation.name": operation, "gen_ai.request.model": model})
            ctx = getattr(request, "gateway_key", None)
            if ctx is not None:
                span.set_attributes(_key_attributes(ctx))
    except Exception as exc:
        logger.warning("recording a request's answer on its span failed: %s", type(exc).__name__)


def _key_attributes(ctx) -> dict:
    attributes = {"gateway.key_id": ctx.key_id}
    if ctx.team_id is not None:
        attributes["gateway.team_id"] = ctx.team_id
    return attributes


def trace_call_start(call) -> None:
    """An admitted relay call (its finish is certain from here on): the request's span becomes the call's, or
    for a request of several calls (compare), the call gets a child span of its own."""
    tracer = sdk.tracer
    if tracer is None:
        return
    request = _request_trace.get()
    if request is None or request.ended:
        return
    try:
        operation = OPERATIONS.get(call.operation, call.operation)
        model = call.requested_model or call.model
        name = f"{operation} {model}"
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "gateway.stream": call.stream,
            **_key_attributes(call.ctx),
            **request_params(call.body),
        }
        if call.run_id or request.adopted:
            attributes["gateway.request_id"] = call.request_id
            if call.run_id:
                attributes["gateway.run_id"] = call.run_id
            otel = _otel()
            span = tracer.start_span(
                name, context=otel.in_span(request.span), kind=otel.kinds.INTERNAL, attributes=attributes
            )
            call.trace = CallTrace(span, request, own=True)
        else:
            request.adopted = True
            request.span.update_name(name)
            request.span.set_attributes(attributes)
            call.trace = CallTrace(request.span, request, own=False)
        request.calls += 1
    except Exception as exc:
        logger.warning("request %s: starting its span failed: %s", call.request_id, type(exc).__name__)


def trace_attempt_start(call, route, headers: dict) -> dict:
    """A client span for one upstream attempt, its context added to `headers` (`traceparent`) so the provider's
    own spans join the trace. Returns the headers."""
    trace = call.trace
    if trace is None:
        return headers
    try:
        _attempt_end(trace)
        provider = route.provider
        operation = OPERATIONS.get(call.operation, call.operation)
        address, port = server_address(provider.base_url)
        attributes = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": genai_provider_name(provider.base_url, provider.name),
            "gen_ai.request.model": route.upstream_model,
            "server.address": address,
            "server.port": port,
            "gateway.provider": provider.name,
            "gateway.deployment_id": route.deployment_id,
            "gateway.attempt": call.attempts,
        }
        otel = _otel()
        span = sdk.tracer.start_span(
            f"{operation} {route.upstream_model}",
            context=otel.in_span(trace.span),
            kind=otel.kinds.CLIENT,
            attributes=attributes,
        )
        trace.attempt, trace.attempt_status = span, 0
        otel.propagator.inject(headers, context=otel.in_span(span))
    except Exception as exc:
        logger.warning("request %s: starting an attempt's span failed: %s", call.request_id, type(exc).__name__)
    return headers


def trace_attempt_answered(call, status: int) -> None:
    """The HTTP status the upstream answered the attempt with."""
    trace = call.trace
    if trace is not None and trace.attempt is not None:
        trace.attempt_status = status
        trace.attempt.set_attribute("http.response.status_code", status)


def trace_attempt_failed(call, failure) -> None:
    """The attempt failed before the first byte (an UpstreamFailure): its span ends as an error; the next
    deployment gets a span of its own."""
    trace = call.trace
    if trace is None or trace.attempt is None:
        return
    error_type = str(trace.attempt_status) if trace.attempt_status >= 400 else failure.kind
    _attempt_end(trace, error_type, failure.reason)


def _attempt_end(trace: CallTrace, error_type: str = "", description: str = "") -> None:
    span, trace.attempt = trace.attempt, None
    if span is None:
        return
    try:
        if error_type:
            _error_set(span, error_type, description)
        span.end()
    except Exception as exc:
        logger.warning("ending an attempt's span failed: %s", type(exc).__name__)


def trace_call_finish(call, event: dict) -> None:
    """The call finished (answered, failed, or its client left): its span gets the figures of its usage event
    and ends (the request's span once the request is done too), and so does its last attempt's."""
    trace = call.trace
    if trace is None:
        return
    call.trace = None
    try:
        status, error_type = event["status_code"], event["error_type"]
        if trace.attempt is not None:
            # The attempt that answered: over when the call is (a stream's upstream closes just before).
            failed = status >= 400 and error_type != "client_disconnected"
            upstream = str(trace.attempt_status) if trace.attempt_status >= 400 else error_type
            _attempt_end(trace, upstream if failed else "")
        span = trace.span
        span.set_attributes(call_attributes(call, event))
        if trace.own:
            _status_set(span, status, error_type)
            span.end()
        request = trace.request
        if not trace.own:
            request.status, request.error_type = status, error_type
        request.calls -= 1
        request.end_if_done()
    except Exception as exc:
        logger.warning("request %s: ending its span failed: %s", call.request_id, type(exc).__name__)


def call_attributes(call, event: dict) -> dict:
    """A finished call's span attributes, from its usage event (the same figures as its usage record)."""
    attributes = {
        "gen_ai.response.model": call.model,
        "gen_ai.usage.input_tokens": event["prompt_tokens"],
        "gen_ai.usage.output_tokens": event["completion_tokens"],
        "gateway.route": call.route_label,
        "gateway.attempts": call.attempts,
    }
    if event["status_code"] >= 400:
        # The call's own outcome: a stream that failed after its 200 went out, or the client that left.
        attributes["gateway.status_code"] = event["status_code"]
    if event.get("tokens_estimated"):
        attributes["gateway.tokens_estimated"] = True
    for field, name in (
        ("cached_tokens", "gen_ai.usage.cache_read.input_tokens"),
        ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens"),
        ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
    ):
        if event.get(field):
            attributes[name] = event[field]
    route = call.route
    if route is not None:
        provider = route.provider
        attributes["gen_ai.provider.name"] = genai_provider_name(provider.base_url, provider.name)
        attributes["gateway.provider"] = provider.name
    if call.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (call.finish_reason,)
    for field, name in (("ttfb_ms", "gateway.ttfb_ms"), ("ttfb_upstream_ms", "gateway.ttfb_upstream_ms")):
        if event.get(field) is not None:
            attributes[name] = event[field]
    if event.get("cost") is not None:
        attributes["gateway.cost"] = event["cost"]
    if call.cache_result:
        attributes["gateway.cache"] = call.cache_result
    return attributes
