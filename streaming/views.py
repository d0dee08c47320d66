"""Async HTTP views of the gateway: the OpenAI- and Anthropic-compatible APIs (chat, Responses,
Messages, ...), health and readiness."""

import asyncio
import logging
import time
from contextlib import aclosing
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

import orjson
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.http.request import split_domain_port, validate_host

from accounts.auth import key_context_resolve, key_from_headers
from accounts.context import KeyContext
from accounts.limits import limits_admit_requests
from accounts.stored_responses import stored_response_find
from aigateway.db import db_read
from aigateway.errors import GatewayError, bad_request
from aigateway.redis import redis_async
from aigateway.security_headers import request_is_secure
from aigateway.shutdown import shutdown_phase
from providers.dialects.anthropic import anthropic
from providers.dialects.openai import openai
from providers.dialects.responses import responses
from providers.dialects.sse import sse_encode
from providers.health import provider_down_keys, providers_enabled_ids, providers_health_overview
from providers.route_rules import RouteDecision
from providers.routing import route_table_load, router
from streaming.background import background_answer, background_body, background_cancel
from streaming.cache import cache_directive, cache_plan
from streaming.cache_hits import cache_hit_answer
from streaming.compare import CompareRun, compare_prepare
from streaming.edge import (
    anthropic_if_versioned,
    authenticate,
    call_admit,
    check_chat_body,
    check_completions_body,
    check_embeddings_body,
    check_messages_body,
    check_responses_body,
    only,
    read_json_body,
    route_choose,
    speaks,
)
from streaming.meter import StreamMeter
from streaming.relay import (
    KEEPALIVE,
    STREAM_HEADERS,
    RelayCall,
    relay_chat,
    relay_count_tokens,
    relay_open,
    stream_response,
)
from streaming.responses_store import store_plan, stored_request_expand
from streaming.resumable import ResumableStream, resumable_check, sse_live, sse_replay

logger = logging.getLogger(__name__)

# Client headers passed on to a provider of the client's own dialect.
_FORWARDED_HEADERS = {"openai": (), "anthropic": ("anthropic-beta", "anthropic-version")}


# Query parameters passed on likewise, and no others (a client's `key=` must never reach a provider under the
# gateway's credentials): Anthropic's SDK sends `?beta=true` on its beta calls; OpenAI's APIs take none on POST.
_FORWARDED_QUERY = {"anthropic": ("beta",)}


def _forwarded_headers(request, dialect) -> dict[str, str]:
    return {name: request.headers[name] for name in _FORWARDED_HEADERS.get(dialect.name, ()) if name in request.headers}


def _forwarded_query(request, dialect) -> str:
    allowed = _FORWARDED_QUERY.get(dialect.name, ())
    if not allowed:
        return ""
    pairs = parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True)
    return urlencode([(name, value) for name, value in pairs if name in allowed])


async def _post_json(request) -> tuple[str, KeyContext, dict]:
    """What every POST endpoint starts with: a request id, the caller's key, and the JSON body."""
    request_id = request.gateway_request_id
    only("POST")(request)
    ctx = await authenticate(request)
    return request_id, ctx, read_json_body(request)


def relay_call_build(
    *,
    request_id: str,
    ctx: KeyContext,
    body: dict,
    decision: RouteDecision,
    dialect,
    endpoint: str,
    operation: str = "chat",
    started: float,
    upstream_headers: dict[str, str] | None = None,
    upstream_query: str = "",
) -> RelayCall:
    """A checked, routed request as the relay takes it, whichever door it came through (these views, the
    Responses websocket); the door then plans the cache, admits the call (call_admit) and opens it."""
    options = body.get("stream_options")
    return RelayCall(
        request_id=request_id,
        ctx=ctx,
        endpoint=endpoint,
        model=decision.model,
        requested_model=decision.requested,
        route_label=decision.route,
        fallbacks=decision.fallbacks,
        operation=operation,
        body=body,
        stream=bool(body.get("stream")),
        client_wants_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        meter=StreamMeter(started),
        dialect=dialect,
        upstream_headers=upstream_headers or {},
        upstream_query=upstream_query,
    )


async def _chat(request, *, dialect, endpoint: str, check_body, operation: str = "chat") -> HttpResponse:
    """The shared path of the relayed endpoints: authenticate, check, route, admit, relay, record."""
    started = time.perf_counter()
    request_id, ctx, body = await _post_json(request)
    check_body(body)
    resumable = resumable_wanted(request, ctx)
    body_size = len(request.body)
    plan = background = None
    if endpoint == "responses":
        continued = body.get("previous_response_id") is not None
        body, plan, background = await _responses_prepare(ctx, body)
        if continued:
            body_size = len(orjson.dumps(body))  # the conversation it continues counts for the limits
    decision = await route_choose(
        ctx, body, dialect=dialect.name, meta=request.META, body_size=body_size, kind=operation
    )
    call = relay_call_build(
        request_id=request_id,
        ctx=ctx,
        body=body,
        decision=decision,
        dialect=dialect,
        endpoint=endpoint,
        operation=operation,
        started=started,
        upstream_headers=_forwarded_headers(request, dialect),
        upstream_query=_forwarded_query(request, dialect),
    )
    if plan is not None:
        call.store = plan
        call.response_fields = plan.response_fields
        if background is not None:
            call.response_fields = {**call.response_fields, "background": True}
    try:
        if operation == "chat" and background is None:
            cache_plan(call, cache_directive(request.headers))
        await call_admit(call, body_size)
        if call.cache_hit:
            return await cache_hit_answer(call)
        if background is not None:
            return await background_answer(call, client_stream=background)
        if resumable and call.stream:
            return await relay_resumable(call)
        return await relay_chat(call)
    except GatewayError as error:
        error.headers = {**call.headers(), **error.headers}
        raise


async def _responses_prepare(ctx: KeyContext, body: dict):
    """A Responses body continued from the stored response it names (previous_response_id), the plan for
    storing its answer (None with `store: false`), and for `background: true` whether the client streams it
    (None: not a background request). The body returned is what the call sends."""
    body, previous = await stored_request_expand(ctx, body)
    plan = store_plan(ctx, body, previous)
    background = body.get("background")
    if background is None or background is False:
        return body, plan, None
    if background is not True:
        raise bad_request("'background' must be a boolean", param="background")
    if plan is None:
        raise bad_request("background mode needs a stored response: it cannot be used with store: false",
                          param="background")  # fmt: skip
    return background_body(body), plan, bool(body.get("stream"))


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def resumable_wanted(request, ctx: KeyContext) -> bool:
    """Whether the request's stream is to be resumable: its `x-gateway-resumable` header says so, else its key's
    (or tier's) `resumable_streams`."""
    value = request.headers.get("x-gateway-resumable")
    if value is None:
        return ctx.resumable_streams
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise GatewayError(400, "invalid_request", "the x-gateway-resumable header must be true or false")


async def relay_resumable(call: RelayCall, *, stream_id: str = "") -> HttpResponse:
    """A streamed call as a resumable stream (streaming.resumable): its events carry SSE ids and the response
    the stream's id (`x-gateway-stream-id`), and a client that drops may reconnect with GET /v1/streams/{id}."""
    body = await relay_open(call)
    # The stream runs the body from now on, whatever the client does (relay_open's guard for a body never
    # iterated must not end the call when this request ends).
    call.body_started = True
    try:
        stream = await ResumableStream.open(
            body, ctx=call.ctx, stream_id=stream_id, on_stop=lambda reason: resumable_stopped(call, reason)
        )
    except Exception as exc:
        # Redis unreachable: the answer still streams, only it cannot be resumed.
        logger.warning(
            "request %s: not resumable, its stream could not be opened: %s", call.request_id, type(exc).__name__
        )
        return stream_response(body, {**STREAM_HEADERS, **call.headers()})
    headers = {**STREAM_HEADERS, **call.headers(), "x-gateway-stream-id": stream.stream_id}
    return stream_response(sse_live(stream), headers)


def resumable_stopped(call: RelayCall, reason: str) -> None:
    if reason == "cancelled":
        call.stop_error_type = "cancelled"


@speaks(anthropic_if_versioned)
async def stream_resume(request, stream_id: str):
    """GET /v1/streams/{id}: a resumable stream from after the event its `Last-Event-ID` header (or `?after=`)
    names (from the start without one), then live to its end, with the key that started it, from any gateway
    process. The events are byte for byte those of the original stream."""
    only("GET")(request)
    ctx = await authenticate(request)
    after = last_event_id(request)
    meta = await resumable_check(stream_id, ctx=ctx, after=after)
    if meta.get("kind") != "sse":
        raise GatewayError(
            400, "invalid_request", f"stream '{stream_id}' is a playground run's: resume it over the playground socket"
        )
    headers = {**STREAM_HEADERS, "x-request-id": request.gateway_request_id, "x-gateway-stream-id": stream_id}
    return stream_response(sse_replay(stream_id, after), headers)


def last_event_id(request) -> int:
    """The id of the last event the client has, from `Last-Event-ID` or `?after=` (0: none)."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        raw = dict(parse_qsl(request.META.get("QUERY_STRING", ""))).get("after", "0")
    raw = raw.strip() or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise GatewayError(
            400, "invalid_request", f"the last event id must be a non-negative integer, got {raw[:40]!r}"
        )
    return int(raw)


@speaks(openai)
async def response_cancel(request, response_id: str):
    """POST /v1/responses/{id}/cancel: stop a background response (see streaming.background) and return it."""
    only("POST")(request)
    ctx = await authenticate(request)

    async def stored(response_id: str) -> dict | None:
        found = await stored_response_find(owner_id=ctx.owner_id, response_id=response_id)
        return found.response() if found is not None else None

    answer = await background_cancel(ctx, response_id, stored=stored)
    return HttpResponse(orjson.dumps(answer), content_type="application/json")


@speaks(openai, endpoint="chat.completions")
async def chat_completions(request):
    """OpenAI Chat Completions, relayed to any deployment (translated when it speaks another dialect)."""
    return await _chat(request, dialect=openai, endpoint="chat.completions", check_body=check_chat_body)


@speaks(openai, endpoint="responses")
async def create_response(request):
    """OpenAI Responses without stored state, relayed to any deployment (translated unless it speaks Responses)."""
    return await _chat(request, dialect=responses, endpoint="responses", check_body=check_responses_body)


@speaks(anthropic, endpoint="messages")
async def messages(request):
    """Anthropic Messages, relayed to any deployment (translated when it speaks another dialect)."""
    return await _chat(request, dialect=anthropic, endpoint="messages", check_body=check_messages_body)


@speaks(openai, endpoint="embeddings")
async def embeddings(request):
    """OpenAI embeddings, relayed to deployments that speak OpenAI's API; usage counts the input tokens."""
    return await _chat(
        request, dialect=openai, endpoint="embeddings", check_body=check_embeddings_body, operation="embeddings"
    )


@speaks(openai, endpoint="completions")
async def completions(request):
    """Legacy text completions, streamed or not, relayed to deployments that speak OpenAI's API."""
    return await _chat(
        request, dialect=openai, endpoint="completions", check_body=check_completions_body, operation="completions"
    )


@speaks(anthropic)
async def count_tokens(request):
    """Anthropic's /v1/messages/count_tokens: the provider's count, or the gateway's estimate for
    deployments that speak another dialect. Not a completion: it takes one request from the key's
    requests per minute (the bucket its chat calls use), but no tokens, no concurrency slot and no
    usage record."""
    request_id, ctx, body = await _post_json(request)
    check_messages_body(body)
    decision = await route_choose(ctx, body, dialect="anthropic", meta=request.META, body_size=len(request.body))
    call = RelayCall(
        request_id=request_id,
        ctx=ctx,
        endpoint="count_tokens",
        model=decision.model,
        requested_model=decision.requested,
        route_label=decision.route,
        body=body,
        stream=False,
        client_wants_usage=False,
        meter=StreamMeter(),
        dialect=anthropic,
        upstream_headers=_forwarded_headers(request, anthropic),
    )
    call.admission = await limits_admit_requests(ctx)
    if not call.admission.allowed:
        raise GatewayError(
            429, "rate_limit_exceeded", call.admission.message, headers=call.headers(), param=call.admission.code
        )
    answer = await relay_count_tokens(call)
    return HttpResponse(orjson.dumps(answer), content_type="application/json", headers=call.headers())


@speaks(openai, endpoint="compare")
async def compare(request):
    """Several models at once, their events merged into one SSE stream (see streaming.compare)."""
    started = time.perf_counter()
    request_id, ctx, body = await _post_json(request)
    prepared = await compare_prepare(ctx=ctx, body=body, body_size=len(request.body), meta=request.META)
    prepared.cache_directive = cache_directive(request.headers)
    resumable = resumable_wanted(request, ctx)
    run = CompareRun(prepared, started=started)
    headers = {**STREAM_HEADERS, "x-request-id": request_id, "x-gateway-run-id": run.run_id}
    if resumable:
        stream = await ResumableStream.open(_compare_sse(run), ctx=ctx, on_stop=lambda _reason: run.cancel())
        headers["x-gateway-stream-id"] = stream.stream_id
        return stream_response(sse_live(stream), headers)
    return stream_response(_compare_sse(run), headers)


async def _compare_sse(run: CompareRun):
    async with aclosing(run.events(keepalive=settings.GATEWAY_SSE_KEEPALIVE_SECONDS)) as events:
        async for event in events:
            yield KEEPALIVE if event is None else sse_encode(orjson.dumps(event))
    yield sse_encode(b"[DONE]")


def _model_entry(name: str, created: float, dialect, kinds: tuple[str, ...]) -> dict:
    if dialect is anthropic:
        created_at = datetime.fromtimestamp(created, tz=UTC).isoformat().replace("+00:00", "Z")
        return {"type": "model", "id": name, "display_name": name, "created_at": created_at}
    return {"id": name, "object": "model", "created": int(created), "owned_by": "gateway", "kinds": list(kinds)}


@speaks(anthropic_if_versioned)
async def models(request):
    """The models this key may use: OpenAI's list, or Anthropic's when the client sends anthropic-version."""
    only("GET")(request)
    ctx = await authenticate(request)
    table = await router.table()
    dialect = anthropic_if_versioned(request)
    # Listed name -> the model behind it (itself, or an alias's model).
    served = {name: name for name in table.models if ctx.may_use(name)}
    if settings.GATEWAY_MODELS_LIST_ALIASES:
        # Exact aliases only: a pattern is not a name a client could pick from a list.
        for alias, model in table.routing.exact_aliases.items():
            if model in served:
                served.setdefault(alias, model)
    data = [
        _model_entry(name, table.models[model], dialect, table.kinds.get(model) or ("chat",))
        for name, model in sorted(served.items())
    ]
    if dialect is anthropic:
        page = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    else:
        page = {"object": "list", "data": data}
    return HttpResponse(orjson.dumps(page), content_type="application/json")


@speaks(anthropic_if_versioned)
async def model_detail(request, model: str):
    """One model (the SDKs' models.retrieve), if this key may use it."""
    only("GET")(request)
    ctx = await authenticate(request)
    table = await router.table()
    if model not in table.models or not ctx.may_use(model):
        raise GatewayError(404, "model_not_found", f"the model '{model}' does not exist", param="model")
    kinds = table.kinds.get(model) or ("chat",)
    entry = _model_entry(model, table.models[model], anthropic_if_versioned(request), kinds)
    return HttpResponse(orjson.dumps(entry), content_type="application/json")


def _path_family(request):
    return anthropic if request.path.startswith("/v1/messages") else openai


@speaks(_path_family)
async def not_found(request, rest: str = ""):
    """Any other /v1/ path: a JSON 404 in the dialect of its path family, never an HTML page."""
    raise GatewayError(404, "not_found", f"no such endpoint: {request.method} {request.path}")


# The API's endpoints by their path under /v1, with their method: where a client whose base URL lacks /v1,
# or has it once too many, is pointed to.
API_ENDPOINTS = {
    "chat/completions": "POST",
    "responses": "POST",
    "messages": "POST",
    "messages/count_tokens": "POST",
    "compare": "POST",
    "embeddings": "POST",
    "completions": "POST",
    "models": "GET",
}
DOUBLED_PREFIX = "/v1/v1/"


def api_path_unprefixed(path: str) -> bool:
    """Whether `path` is an API endpoint's without its /v1 (`/chat/completions`, `/models/{id}`)."""
    rest = path[1:]
    return rest in API_ENDPOINTS or (rest.startswith("models/") and len(rest) > 7)


def _gateway_url(request) -> str:
    """This gateway's URL as the client reached it: the scheme (a proxy's X-Forwarded-Proto counts as
    SECURE_PROXY_SSL_HEADER says) and the Host header, quoted only when it is well formed and one of
    ALLOWED_HOSTS (as Django's `get_host` checks it); otherwise a placeholder, so the hint never echoes
    an arbitrary header."""
    scope = getattr(request, "scope", None)
    secure = request_is_secure(scope) if scope is not None else request.is_secure()
    scheme = "https" if secure else "http"
    domain, port = split_domain_port(request.headers.get("host", ""))
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return f"{scheme}://HOST:PORT"
    return f"{scheme}://{domain}" + (f":{port}" if port else "")


def _wrong_base_url_dialect(request):
    """Anthropic's error shape for the Messages paths and for Anthropic's SDKs (which always send
    anthropic-version), OpenAI's for the rest."""
    if request.path.removeprefix(DOUBLED_PREFIX[:-1]).startswith("/messages"):
        return anthropic
    return anthropic_if_versioned(request)


@speaks(_wrong_base_url_dialect)
async def wrong_base_url(request):
    """An API path without /v1 (`/chat/completions`) or with it twice (`/v1/v1/messages`): the client's base
    URL is wrong. A JSON 404 in the client's format naming the right path and the base URL to set, instead
    of a page of HTML an SDK would show as an unreadable error."""
    base = _gateway_url(request)
    doubled = request.path.startswith(DOUBLED_PREFIX)
    rest = request.path[len(DOUBLED_PREFIX) if doubled else 1 :]
    right = f"{_endpoint_method(rest, request.method)} /v1/{rest}"
    anthropic_client = _wrong_base_url_dialect(request) is anthropic
    if doubled and anthropic_client:
        # Anthropic's SDKs add /v1 to their base URL themselves.
        where = f"the base URL ends in /v1 once too many ({right}): set it to {base}, Anthropic's SDKs add /v1"
    elif doubled:
        where = (
            f"the base URL ends in /v1 once too many ({right}): set it to {base}/v1, or to {base} for a client "
            "that adds /v1 itself"
        )
    elif anthropic_client:
        where = (
            f"the API is under /v1 ({right}); set the base URL to {base} for Anthropic's SDKs, which add /v1 "
            f"themselves, or to {base}/v1 for a client that does not"
        )
    else:
        where = f"the API is under /v1 ({right}); set the base URL to {base}/v1"
    raise GatewayError(
        404, "wrong_base_url", f"{request.method} {request.path} is not an endpoint of this gateway: {where}"
    )


def _endpoint_method(rest: str, method: str) -> str:
    """The method of the endpoint at /v1/`rest`; the client's own for a path that is none of them."""
    if rest.startswith("models/"):
        return "GET"
    return API_ENDPOINTS.get(rest, method)


async def health(request):
    """Liveness: 200 while the process runs, draining included. It never fails on a dependency, so an
    orchestrator restarts only a process that is stuck. `?checks=1` adds the health of what the gateway
    depends on (the database, Redis, a provider not marked down), 503 when one is missing: for monitoring and
    alerts, never for a liveness probe or a load balancer. With a staff key, a summary of provider health."""
    payload: dict = {"status": "ok"}
    status = 200
    if ("checks", "1") in parse_qsl(request.META.get("QUERY_STRING", "")):
        checks = await _dependency_checks()
        payload["checks"] = checks
        if any(value != "ok" for value in checks.values()):
            payload["status"], status = "degraded", 503
    plaintext = key_from_headers(request.headers)
    if plaintext:
        ctx = await key_context_resolve(plaintext)
        if ctx is not None and ctx.is_staff:
            payload["providers"] = await _provider_health()
    return JsonResponse(payload, status=status, headers={"Cache-Control": "no-store"} if "checks" in payload else None)


async def _provider_health() -> list[dict]:
    rows = await db_read(providers_health_overview)
    return [
        {
            "name": row["name"],
            "enabled": row["enabled"],
            "status": row["health_status"],
            "checked_at": row["health_checked_at"].isoformat() if row["health_checked_at"] else None,
            "latency_ms": row["health_latency_ms"],
            "consecutive_failures": row["health_consecutive_failures"],
        }
        for row in rows
    ]


# Each check must answer within this, so a hung database or Redis cannot hang a probe.
READY_CHECK_TIMEOUT_SECONDS = 2.0
# A check still running (hung) is shared by the probes that come meanwhile instead of started again, so a
# hung dependency holds one thread or connection per process, not one per probe.
_ready_running: dict[str, asyncio.Task] = {}
# Set once this process has loaded its route table: from then on readiness needs no store at all.
_route_table_loaded = False


@speaks(openai)
async def ready(request):
    """Readiness, for a load balancer or orchestrator (`/health` is liveness): 200 while this process can
    serve and wants traffic - it is not draining or stopping (a stop signal makes it 503 at once, while it
    still serves), and it has loaded its route table once. Process-local on purpose: a database or Redis
    outage is every process's at once, and taking them all out of rotation would only turn errors into
    refused connections; `/health?checks=1` and the metrics report the stores. Names nothing secret."""
    global _route_table_loaded
    only("GET", "HEAD")(request)
    phase = shutdown_phase()
    table = "loaded"
    if not _route_table_loaded:
        ok, problem = await _ready_check("route_table", _route_table_load)
        _route_table_loaded = ok
        table = "loaded" if ok else f"not loaded: {problem}"
    is_ready = phase == "serving" and _route_table_loaded
    return JsonResponse(
        {"status": "ready" if is_ready else "not_ready", "checks": {"process": phase, "route_table": table}},
        status=200 if is_ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def _route_table_load() -> str:
    # The database's part only: the config version in Redis is only a cache's freshness.
    await db_read(route_table_load)
    return ""


async def _dependency_checks() -> dict[str, str]:
    """What `/health?checks=1` shows: each store and the providers, "ok" or what is wrong."""
    database, redis, providers = await asyncio.gather(
        _ready_check("database", _ready_database),
        _ready_check("redis", _ready_redis),
        _ready_check("providers", _ready_providers),
    )
    checks = {"database": database[1], "redis": redis[1], "providers": providers[1]}
    if not providers[0] and not (database[0] and redis[0]):
        # Its answer comes from both stores: say which one it waits for rather than repeat their error.
        missing = " and ".join(name for name, (ok, _) in (("database", database), ("redis", redis)) if not ok)
        checks["providers"] = f"unknown: {missing} unreachable"
    return checks


async def _ready_check(name: str, check) -> tuple[bool, str]:
    """(passed, what to show) of one check, bounded by READY_CHECK_TIMEOUT_SECONDS."""
    task = _ready_running.get(name)
    if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
        task = _ready_running[name] = asyncio.ensure_future(check())
    try:
        # Shielded: a probe that gives up leaves the check to finish (or time out) for the next probe.
        problem = await asyncio.wait_for(asyncio.shield(task), READY_CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return False, f"no answer within {READY_CHECK_TIMEOUT_SECONDS:g}s"
    except Exception as exc:
        # The exception's type only: its message may hold an address or a credential.
        return False, f"unreachable: {type(exc).__name__}"
    return (False, problem) if problem else (True, "ok")


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _ready_database() -> str:
    await db_read(_database_answers)
    return ""


async def _ready_redis() -> str:
    await redis_async().ping()
    return ""


async def _ready_providers() -> str:
    """Empty when some enabled provider is not marked down by the health check (the key routing reads)."""
    provider_ids = await db_read(providers_enabled_ids)
    if not provider_ids:
        return "no provider is enabled"
    down = await redis_async().mget(provider_down_keys(provider_ids))
    if all(mark is not None for mark in down):
        return "no enabled provider is healthy"
    return ""
