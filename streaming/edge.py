"""The edge of the API: authenticate, read and check the body, admit, and render every
GatewayError in the client's dialect (the one place errors become responses)."""

import asyncio
import logging
import time
import zlib
from functools import wraps

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse

from accounts.auth import key_context_resolve, key_from_headers
from accounts.budgets import to_units
from accounts.context import KeyContext
from accounts.limits import limits_admit, limits_admit_requests
from accounts.usage import usage_started
from aigateway.errors import GatewayError, bad_request
from aigateway.metrics import metrics_response
from providers.dialects.anthropic import anthropic
from providers.dialects.base import Dialect
from providers.dialects.nesting import JSON_DEPTH_MAX, may_nest_deeper, too_deep_field
from providers.dialects.openai import openai
from providers.route_rules import PromptTooLong, RouteDecision, UnknownModel, request_facts, route_decide
from providers.routing import router
from streaming.cache import cache_found, cache_key_with_admission, cache_lookup
from streaming.refusals import request_refused
from streaming.relay import call_end, call_in_flight, call_marker, new_request_id, spawn
from streaming.tokens import rough_prompt_estimate
from streaming.tracing import request_trace_answered, request_trace_error, request_trace_start, trace_call_start

logger = logging.getLogger(__name__)


def error_response(dialect, error: GatewayError) -> HttpResponse:
    """`error` in `dialect`'s error shape (its message already capped by GatewayError)."""
    headers = dict(error.headers)
    return HttpResponse(
        orjson.dumps(dialect.error_body(error)), status=error.status, content_type="application/json", headers=headers
    )


def _dialect_for(dialect, request):
    return dialect(request) if callable(dialect) and not isinstance(dialect, Dialect) else dialect


def speaks(dialect, *, endpoint: str | None = None):
    """View decorator for the API: every response carries the request id (`x-request-id`, and
    `request-id` for Anthropic clients, whose SDKs read that one), and any GatewayError (or
    unexpected exception) leaves in `dialect`'s error shape. `dialect` may be a function of the
    request, for paths both families of clients call. A refusal is counted in the metrics and, for a
    door whose calls are booked under `endpoint`, recorded when its key is known (streaming.refusals)."""

    def decorator(view):
        view_name = view.__name__

        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            started = time.perf_counter()
            request.gateway_request_id = request_id = new_request_id()
            speaking = _dialect_for(dialect, request)
            trace = request_trace_start(request, view=view_name)
            try:
                response = await view(request, *args, **kwargs)
            except GatewayError as error:
                response = error_response(speaking, error)
                request_refused(request, error, endpoint=endpoint, started=started)
                request_trace_error(trace, error.code)
            except Exception:
                logger.exception("unhandled error in %s (request %s)", view.__name__, request_id)
                error = GatewayError(500, "internal_error", "the gateway failed to handle this request")
                response = error_response(speaking, error)
            response["x-request-id"] = request_id
            if speaking is anthropic:
                response["request-id"] = request_id
            metrics_response(view_name, response.status_code)
            request_trace_answered(trace, request, response, endpoint=endpoint)
            return response

        wrapper.csrf_exempt = True
        return wrapper

    return decorator


def anthropic_if_versioned(request) -> Dialect:
    """Paths both SDKs call (/v1/models): Anthropic's SDKs always send `anthropic-version`."""
    return anthropic if "anthropic-version" in request.headers else openai


def only(*methods: str):
    """Refuse other methods with a 405 naming the allowed ones (and an Allow header)."""

    def check(request) -> None:
        if request.method not in methods:
            allowed = ", ".join(methods)
            raise GatewayError(
                405, "method_not_allowed", f"use {allowed} for {request.path}", headers={"Allow": allowed}
            )

    return check


async def authenticate(request) -> KeyContext:
    plaintext = key_from_headers(request.headers)
    if not plaintext:
        raise GatewayError(
            401, "missing_api_key", "no API key provided: send it as 'Authorization: Bearer <key>' or 'x-api-key'"
        )
    ctx = await key_context_resolve(plaintext)
    if ctx is None:
        # Never echo the key back; the prefix alone is not a secret but adds nothing either.
        raise GatewayError(401, "invalid_api_key", "invalid, disabled or expired API key")
    # For the edge: a refusal from here on is this key's (streaming.refusals).
    request.gateway_key = ctx
    return ctx


def _output_cap(call) -> int | None:
    """The most output the call may produce: its max_tokens (however its format names it), capped by the
    key's tier; else the tier's cap."""
    body = call.body
    max_output = (
        body.get("max_completion_tokens")
        or body.get("max_tokens")
        or body.get("max_output_tokens")
        or call.ctx.max_output_tokens
    )
    if call.ctx.max_output_tokens and max_output:
        max_output = min(max_output, call.ctx.max_output_tokens)
    return max_output


async def _max_cost_units(call, max_output: int | None) -> int:
    """What a key with budgets reserves: the call's maximum cost at the dearest deployment that may serve it.
    The prompt is counted as one token per byte of the body (a byte-level tokenizer never makes more), the
    output as the call's cap, else the model's documented one. That cap is then sent upstream
    (`call.output_cap`), so the real cost can never pass the reservation."""
    table = await router.table()
    if max_output is None:
        max_output = table.max_output.get(call.model) or settings.GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS
    call.output_cap = max_output
    prices = table.max_prices((call.model, *call.fallbacks))
    if prices is None:
        return 0
    return to_units(prices.max_cost(call.body_size, max_output))


async def call_admit(call, body_size: int) -> None:
    """Admit one relay call under its key's limits and budgets (one Redis round trip); a refusal is a 429
    (`budget_exceeded`, not to be retried, when a budget refused), and a limits store that cannot be reached
    a 503 `limits_unavailable` (unless GATEWAY_LIMITS_FAIL_OPEN). A call with a response cache plan is looked
    up in the same round trip: a hit (`call.cache_hit`, its answer in `call.cache_answer`) is admitted on its
    requests per minute alone, and the door answers it from the cache instead of relaying it."""
    call.body_size = body_size
    if call.ctx.log_bodies == "full" and call.cache_events is None and call.operation == "chat":
        call.cache_events = []  # the answer's events, for the request log's record (see relay.call_log_entry)
    marker = call_marker(call)
    separate_cache = bool(settings.GATEWAY_CACHE_REDIS_URL)
    try:
        # A separate cache Redis is asked first, in a round trip of its own.
        found = cache_found(call, await cache_lookup(call)) if separate_cache else None
        if found:
            call.admission = await limits_admit_requests(call.ctx)
        else:
            cache_key = None if separate_cache else cache_key_with_admission(call)
            call.admission = await _admission(call, marker, cache_key)
            cached = call.admission.cached
            if found is None and not cache_found(call, cached) and cached is not None:
                # An entry that cannot be read (another version wrote it): admitted again, as the miss it is.
                call.admission = await _admission(call, marker, None)
            if call.admission.allowed and not call.admission.marked and not call.cache_hit:
                # A key without limits has no admission round trip to carry the marker: it is written
                # while the upstream is being opened, instead of the request waiting for it.
                call.marker_stored = spawn(usage_started(call.request_id, marker))
    except asyncio.CancelledError:
        # The client left while being admitted: the call may hold a marker already; record it as cancelled.
        call_end(call, status=499, error_type="client_disconnected")
        raise
    if call.admission.allowed and not call.cache_hit:
        call_in_flight(call)
    if call.admission.allowed:
        trace_call_start(call)
    if not call.admission.allowed:
        headers = dict(call.admission.headers_for(call.dialect.name))
        headers["x-request-id"] = call.request_id
        if call.admission.budget is not None:
            # Waiting does not help (the period resets later, or ops raise the budget): the SDKs must not retry.
            headers["x-should-retry"] = "false"
            raise GatewayError(
                429, "budget_exceeded", call.admission.message, headers=headers, error_type="insufficient_quota"
            )
        raise GatewayError(
            429, "rate_limit_exceeded", call.admission.message, headers=headers, param=call.admission.code
        )


async def _admission(call, marker: bytes, cache_key: str | None):
    """limits_admit for `call`: its estimate, its usage marker, its budget reservation, and the cache entry to
    look up in the same round trip (None: none)."""
    max_output = _output_cap(call)
    max_cost = await _max_cost_units(call, max_output) if call.ctx.budgets else 0
    return await limits_admit(
        call.ctx,
        estimate_tokens=rough_prompt_estimate(call.body_size, max_output),
        request_id=call.request_id,
        marker=marker,
        max_cost_units=max_cost,
        cache_key=cache_key,
    )


def _kinds_text(kinds: tuple[str, ...]) -> str:
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]


def _model_serves(table, model: str, kind: str) -> bool:
    """Whether `model` is for `kind` of request ("chat", "embeddings", "completions"); no kinds = chat."""
    return kind in (table.kinds.get(model) or ("chat",))


async def route_choose(
    ctx: KeyContext, body: dict, *, dialect: str, meta=None, body_size: int = 0, kind: str = "chat"
) -> RouteDecision:
    """The model that serves this request (the one named, an alias's, a rule's, a context fallback's),
    checked against the key's tier and the model's kinds: 404 for an unknown name, 403 when the tier does
    not allow the model that would serve, 400 when that model is not for `kind` of request (a chat model
    asked for embeddings) or the prompt fits no model. No query: the route table is in process."""
    table = await router.table()
    routing = table.routing
    name = body["model"]
    if not routing.rules and name in table.models and name not in routing.context_windows:
        # The common case costs no fact gathering at all.
        decision = RouteDecision(name, name, "default", routing.fallbacks.get(name, ()), ())
    else:
        # Only the headers some rule looks at, read straight from the request's META dict.
        headers = {}
        for header in routing.header_names if meta else ():
            value = meta.get("HTTP_" + header.upper().replace("-", "_"))
            if value is not None:
                headers[header] = value
        facts = request_facts(body, dialect=dialect, tier=ctx.tier_name, headers=headers, body_size=body_size)
        try:
            decision = route_decide(routing, table.models, facts)
        except UnknownModel:
            raise GatewayError(404, "model_not_found", f"the model '{name}' does not exist", param="model") from None
        except PromptTooLong as exc:
            raise GatewayError(400, "context_length_exceeded", str(exc), param="messages") from None
    if not ctx.may_use(decision.model):
        served = f"'{decision.model}'" + (f" (which serves '{name}')" if decision.model != name else "")
        raise GatewayError(
            403, "model_not_allowed", f"this key's tier does not allow the model {served}", param="model"
        )
    if not _model_serves(table, decision.model, kind):
        # Refused here, before admission: a request the model is not for spends nothing of the key's limits.
        served = f"'{decision.model}'" + (f" (asked for as '{name}')" if decision.model != name else "")
        kinds = _kinds_text(table.kinds.get(decision.model) or ("chat",))
        raise GatewayError(400, "unsupported_model_kind", f"model {served} serves {kinds}, not {kind}", param="model")
    if decision.fallbacks and not all(
        ctx.may_use(model) and _model_serves(table, model, kind) for model in decision.fallbacks
    ):
        # A fallback is still this key's request: only models its tier allows, of the request's kind.
        allowed = tuple(
            model for model in decision.fallbacks if ctx.may_use(model) and _model_serves(table, model, kind)
        )
        decision = RouteDecision(decision.requested, decision.model, decision.route, allowed, decision.reasons)
    return decision


def _json_content_type_check(request) -> None:
    """A 415 unless the body is declared as JSON: `application/json` or a `+json` type, any parameters
    (charset). No Content-Type at all is read as JSON, as before: raw HTTP clients often send none. A form
    (what `curl -d` sends unless told otherwise), multipart or text body is refused, not guessed at."""
    declared = request.headers.get("content-type")
    if declared is None or not declared.strip():
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    hint = " (curl: add -H 'Content-Type: application/json', or use --json)" if "form" in media else ""
    raise GatewayError(
        415,
        "unsupported_media_type",
        f"the request body must be JSON sent with 'Content-Type: application/json', not '{declared}'{hint}",
    )


# Content-Encoding names the gateway decodes; `x-gzip` is gzip's old name (RFC 9110, section 8.4.1.3).
_GZIP_CODINGS = ("gzip", "x-gzip")


def _content_coding(request) -> str | None:
    """The body's content coding: "gzip", or None for a plain body; a 415 for any other coding."""
    declared = request.headers.get("content-encoding") or ""
    codings = [coding.strip().lower() for coding in declared.split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _GZIP_CODINGS:
        return "gzip"
    raise GatewayError(
        415,
        "unsupported_content_encoding",
        f"Content-Encoding '{declared}' is not supported: send the body uncompressed or gzip-compressed",
        headers={"Accept-Encoding": "gzip"},
    )


def _gunzip(raw: bytes, limit: int) -> bytes:
    """The decompressed body, never more than `limit` bytes of it held: a body that inflates past the limit
    (a compression bomb included) is a 413 as soon as the limit is passed. Several gzip members, as
    `cat a.gz b.gz` makes, are one body."""
    parts: list[bytes] = []
    size = 0
    rest = raw
    while rest:
        inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        try:
            part = inflater.decompress(rest, limit - size + 1)
        except zlib.error:
            raise bad_request("request body is not valid gzip data (Content-Encoding: gzip)") from None
        size += len(part)
        if size > limit:
            raise GatewayError(
                413, "request_too_large", f"request body exceeds the limit of {limit} bytes once decompressed"
            )
        if not inflater.eof:
            raise bad_request("request body is incomplete gzip data (Content-Encoding: gzip)")
        parts.append(part)
        rest = inflater.unused_data
    return b"".join(parts)


def read_json_body(request) -> dict:
    """The request's JSON object, or the GatewayError that names what is wrong with the body: 415 for a
    body not declared as JSON or in a coding other than gzip, 413 over GATEWAY_MAX_BODY_BYTES (sent or
    decompressed), 400 for anything that is not one JSON object."""
    limit = settings.GATEWAY_MAX_BODY_BYTES
    _json_content_type_check(request)
    coding = _content_coding(request)
    declared = request.META.get("CONTENT_LENGTH")
    if declared and not (declared.isascii() and declared.isdigit()):
        raise bad_request(f"the Content-Length header must be a number of bytes, got '{declared}'")
    if declared and int(declared) > limit:
        raise GatewayError(
            413, "request_too_large", f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    try:
        raw = request.body
    except RequestDataTooBig:
        raise GatewayError(413, "request_too_large", f"request body exceeds the limit of {limit} bytes") from None
    if len(raw) > limit:
        raise GatewayError(
            413, "request_too_large", f"request body of {len(raw)} bytes exceeds the limit of {limit} bytes"
        )
    if raw and coding == "gzip":
        raw = _gunzip(raw, limit)
        # What the views read next (the body's size for the admission estimate) is the JSON itself.
        request._body = raw
    if not raw:
        raise bad_request("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}")
    json_depth_check(raw, body)
    request.gateway_body = body  # what a refusal record names as the model sent
    return body


def json_depth_check(raw: bytes | str, body: dict) -> None:
    """A 400 naming the field when the decoded `body` nests deeper than the gateway could send it on."""
    if may_nest_deeper(raw):
        field = too_deep_field(body)
        if field is not None:
            raise bad_request(
                f"'{field}' nests JSON more than {JSON_DEPTH_MAX} levels deep; at most {JSON_DEPTH_MAX} are accepted",
                param=field,
                code="json_too_deep",
            )


def _check_model_and_messages(body: dict) -> list:
    """What both chat formats require: a model name and a non-empty array of message objects."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required and must be a non-empty string", param="model")
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", param="messages")
    if not isinstance(messages, list):
        raise bad_request(f"'messages' must be an array, got {type(messages).__name__}", param="messages")
    if not messages:
        raise bad_request("'messages' must contain at least one message", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{index}]' must be an object", param=f"messages[{index}]")
    return messages


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Output sizes the gateway reads for admission, whatever the body's format (see call_admit).
LIMIT_SIZES = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _check_sizes(body: dict, sizes: tuple[str, ...]) -> None:
    for name in sizes:
        value = body.get(name)
        if value is not None and not _positive_int(value):
            raise bad_request(f"'{name}' must be a positive integer", param=name)


def check_chat_body(body: dict) -> None:
    """The checks an OpenAI chat body must pass before routing; the rest is the provider's to judge."""
    for index, message in enumerate(_check_model_and_messages(body)):
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise bad_request(
                f"'messages[{index}].role' is required and must be a string", param=f"messages[{index}].role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(
                f"'messages[{index}].content' must be a string or an array of content parts",
                param=f"messages[{index}].content",
            )
    _check_stream_and_sizes(body, (*LIMIT_SIZES, "n"))


def _check_stream_and_sizes(body: dict, sizes: tuple[str, ...]) -> None:
    """What the OpenAI-style bodies share: a boolean `stream`, positive sizes, an object `stream_options`."""
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise bad_request("'stream' must be a boolean", param="stream")
    _check_sizes(body, sizes)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")


def _check_model(body: dict) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required and must be a non-empty string", param="model")


def _is_token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(_positive_int(t) or t == 0 for t in value)


def check_embeddings_body(body: dict) -> None:
    """An OpenAI embeddings body: a model and input (a string, strings, or token lists); the rest is the
    provider's to judge."""
    _check_model(body)
    if "input" not in body:
        raise bad_request("'input' is required", param="input")
    texts = body["input"]
    single = isinstance(texts, str) or _is_token_list(texts)
    if not single and not (
        isinstance(texts, list) and texts and all(isinstance(t, str) or _is_token_list(t) for t in texts)
    ):
        raise bad_request("'input' must be a string, a non-empty array of strings, or token arrays", param="input")
    if isinstance(texts, list) and not single and any(isinstance(t, str) and not t for t in texts):
        raise bad_request("'input' must not contain empty strings", param="input")
    if "dimensions" in body and not _positive_int(body["dimensions"]):
        raise bad_request("'dimensions' must be a positive integer", param="dimensions")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    if body.get("stream"):
        raise bad_request("embeddings cannot be streamed", param="stream")
    _check_sizes(body, LIMIT_SIZES)


def check_completions_body(body: dict) -> None:
    """A legacy completions body: a model, a prompt, and the sizes the gateway reads for limits."""
    _check_model(body)
    if "prompt" not in body:
        raise bad_request("'prompt' is required", param="prompt")
    prompt = body["prompt"]
    if not (
        isinstance(prompt, str)
        or _is_token_list(prompt)
        or (isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_token_list(p) for p in prompt))
    ):
        raise bad_request("'prompt' must be a string, an array of strings, or token arrays", param="prompt")
    _check_stream_and_sizes(body, (*LIMIT_SIZES, "n"))


def check_messages_body(body: dict) -> None:
    """What an Anthropic Messages body must carry for the gateway itself: a model, messages, and sizes
    it reads for limits. Everything else (roles, block types, cache hints, thinking, new fields) is the
    provider's to judge: the same dialect passes it through untouched, a translation refuses with a 400
    what the other side cannot express."""
    _check_model_and_messages(body)
    if "max_tokens" in body and not _positive_int(body["max_tokens"]):
        raise bad_request("'max_tokens' must be a positive integer", param="max_tokens")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    _check_sizes(body, LIMIT_SIZES)


def check_responses_body(body: dict) -> None:
    """A Responses body: a model, the input, and the sizes the gateway reads for limits. A stored response is
    continued by its id (`previous_response_id`, expanded by streaming.responses_store); the Conversations API
    is not offered, so a request naming a conversation is refused."""
    _check_model(body)
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise bad_request("'previous_response_id' must be a non-empty string", param="previous_response_id")
    if body.get("conversation") is not None:
        raise bad_request(
            "'conversation' is not supported: this gateway offers no Conversations API; continue a stored "
            "response with 'previous_response_id', or send the full input with every request",
            param="conversation",
        )
    if "input" not in body:
        raise bad_request("'input' is required", param="input")
    items = body["input"]
    if isinstance(items, list):
        if not items:
            raise bad_request("'input' must contain at least one item", param="input")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise bad_request(f"'input[{index}]' must be an object", param=f"input[{index}]")
    elif not isinstance(items, str) or not items:
        raise bad_request("'input' must be a non-empty string or an array of input items", param="input")
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise bad_request("'stream' must be a boolean", param="stream")
    _check_sizes(body, LIMIT_SIZES)
