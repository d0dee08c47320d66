"""The relay engine: admit, route, open the upstream with failover, forward every event at once.

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
from providers.dialects.base import Usage
from providers.dialects.openai import openai as openai_dialect
from providers.routing import Route, router
from providers.upstream import upstream_client
from streaming.meter import StreamMeter
from streaming.sse import SSEDecoder, sse_encode
from streaming.tokens import count_prompt_tokens, count_tokens

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
    admission: Admission | None = None
    route: Route | None = None
    attempts: int = 0
    status: int = 200
    error_type: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    completion_parts: list[str] = field(default_factory=list)
    finished: bool = False

    def headers(self) -> dict[str, str]:
        headers = {"x-request-id": self.request_id}
        if self.route is not None:
            headers["x-gateway-provider"] = self.route.provider.name
        if self.admission is not None:
            headers.update(self.admission.headers)
        return headers


def spawn(coro) -> None:
    """Run cleanup to completion even if the request task is being cancelled."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def call_finish(call: RelayCall) -> None:
    """Settle the limits lease and push the usage event; never raises."""
    estimated = False
    usage = call.usage
    if usage is None and call.route is not None:
        estimated = True
        usage = Usage(
            prompt_tokens=count_prompt_tokens(call.body.get("messages"), call.body.get("system")),
            completion_tokens=count_tokens("".join(call.completion_parts)),
        )
    usage = usage or Usage()
    summary = call.meter.summary()
    try:
        if call.admission is not None and call.admission.allowed:
            actual = usage.prompt_tokens + usage.completion_tokens if call.route is not None else 0
            await limits_settle(call.ctx, call.admission, actual_tokens=actual)
    except Exception as exc:
        logger.warning("limits settle failed for %s: %s", call.request_id, type(exc).__name__)
    event = {
        "request_id": call.request_id,
        "api_key_id": call.ctx.key_id,
        "model": call.model,
        "provider": call.route.provider.name if call.route else "",
        "deployment_id": call.route.deployment_id if call.route else None,
        "endpoint": call.endpoint,
        "stream": call.stream,
        "status_code": call.status,
        "error_type": call.error_type,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "tokens_estimated": estimated,
        "attempts": call.attempts,
        "created_at": time.time(),
        **summary,
    }
    try:
        await usage_record(event)
    except Exception as exc:
        logger.warning("usage record failed for %s: %s", call.request_id, type(exc).__name__)


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


async def _open(call: RelayCall, route: Route, payload: bytes, path: str, dialect) -> httpx.Response:
    provider = route.provider
    client = upstream_client(provider)
    request = client.build_request(
        "POST",
        provider.base_url + path,
        content=payload,
        headers=dialect.upstream_headers(provider.api_key, dict(provider.extra_headers)),
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise UpstreamFailure(*_transport_reason(exc)) from None
    call.meter.upstream_byte()
    return response


async def _upstream_client_error(response: httpx.Response, dialect) -> GatewayError:
    """A 4xx from the provider that failover cannot fix: pass its message on, in our shape."""
    try:
        raw = await response.aread()
        message = dialect.upstream_error_message(orjson.loads(raw)) if raw else None
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


async def relay_openai_chat(call: RelayCall) -> HttpResponse:
    """/v1/chat/completions against OpenAI-dialect deployments (pass-through with model rewrite)."""
    dialect = openai_dialect
    candidates = await router.candidates(call.model)
    if not candidates:
        raise GatewayError(503, "no_deployment", f"model '{call.model}' has no available deployment")
    last: UpstreamFailure | None = None
    for route in candidates:
        if route.provider.dialect != dialect.name:
            last = UpstreamFailure(502, f"deployment {route.provider.name} speaks {route.provider.dialect}")
            continue
        call.attempts += 1
        call.route = route
        payload = orjson.dumps(
            dialect.prepare_chat(
                call.body,
                upstream_model=route.upstream_model,
                stream=call.stream,
                max_output_tokens=call.ctx.max_output_tokens,
            )
        )
        try:
            response = await _open(call, route, payload, dialect.paths["chat"], dialect)
            if response.status_code >= 500 or response.status_code in _RETRYABLE_STATUS:
                await response.aclose()
                raise UpstreamFailure(
                    502 if response.status_code != 429 else 429, f"upstream returned HTTP {response.status_code}"
                )
            if response.status_code >= 400:
                raise await _upstream_client_error(response, dialect)
            if call.stream:
                result = await _stream_start(call, route, response)
            else:
                result = await _complete(call, route, response)
        except UpstreamFailure as failure:
            logger.info("request %s: deployment %s failed: %s", call.request_id, route.provider.name, failure.reason)
            await router.record_failure(route.provider, failure.reason)
            last = failure
            continue
        await router.record_success(route.provider)
        return result
    status = last.status if last else 502
    if status == 429:
        status = 503
    raise GatewayError(status, "upstream_unavailable", f"all deployments of '{call.model}' failed; last: {last.reason}")


async def _complete(call: RelayCall, route: Route, response: httpx.Response) -> HttpResponse:
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
    data["model"] = call.model
    call.usage = openai_dialect.response_usage(data)
    if call.usage is None:
        call.completion_parts.append(openai_dialect.response_text(data))
    body = orjson.dumps(data)
    call.meter.sent()
    call.finished = True
    return HttpResponse(body, content_type="application/json", headers=call.headers())


async def _stream_start(call: RelayCall, route: Route, response: httpx.Response) -> StreamingHttpResponse:
    """Read up to the first upstream event (still failover-able), then hand the stream to the client."""
    decoder = SSEDecoder()
    upstream = response.aiter_raw()
    first: list = []
    try:
        while not first:
            chunk = await anext(upstream)
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
    return StreamingHttpResponse(
        _stream_body(call, response, upstream, decoder, first),
        headers={**STREAM_HEADERS, **call.headers()},
    )


def _render_openai_event(call: RelayCall, event) -> bytes | None:
    """One upstream event -> the bytes the client gets (None = swallow)."""
    if event.is_done:
        return None
    try:
        chunk = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        logger.info("request %s: dropped a malformed upstream event", call.request_id)
        return None
    if not isinstance(chunk, dict):
        return None
    digest = openai_dialect.digest_chunk(chunk, client_wants_usage=call.client_wants_usage)
    if digest.usage is not None:
        call.usage = digest.usage
    if digest.text:
        call.completion_parts.append(digest.text)
    if digest.finish_reason:
        call.finish_reason = digest.finish_reason
    if digest.error:
        call.status, call.error_type = 502, "upstream_stream_error"
    if not digest.forward:
        return None
    if "model" in chunk:
        chunk["model"] = call.model
    return sse_encode(orjson.dumps(chunk))


async def _stream_body(call: RelayCall, response: httpx.Response, upstream, decoder: SSEDecoder, first: list):
    done = ended = False
    lease_renew_every = settings.GATEWAY_LEASE_TTL_SECONDS / 3
    lease_renew_at = time.monotonic() + lease_renew_every
    try:
        pending = first
        while True:
            if call.admission is not None and call.admission.lease_id and time.monotonic() > lease_renew_at:
                lease_renew_at = time.monotonic() + lease_renew_every
                await limits_lease_refresh(call.ctx, call.admission)
            for event in pending:
                if event.is_done:
                    done = True
                    continue
                out = _render_openai_event(call, event)
                if out is not None:
                    call.meter.sent()
                    yield out
            if done or ended:
                break
            try:
                chunk = await anext(upstream)
            except StopAsyncIteration:
                pending, ended = decoder.flush(), True
                continue
            pending = decoder.feed(chunk)
        if not done and call.finish_reason is None:
            raise httpx.RemoteProtocolError("upstream ended the stream before it was complete")
        call.meter.sent()
        yield b"data: [DONE]\n\n"
        call.finished = True
    except httpx.TransportError as exc:
        call.status, call.error_type = 502, "upstream_stream_error"
        reason = _transport_reason(exc)[1] if not isinstance(exc, httpx.RemoteProtocolError) else str(exc)
        error = GatewayError(502, "upstream_stream_error", f"upstream failed mid-stream: {reason}")
        call.meter.sent()
        yield openai_dialect.stream_error_event(error)
        call.finished = True
    finally:
        if not call.finished:
            call.status, call.error_type = 499, "client_disconnected"
        # Closing the upstream response drops its connection: the provider stops generating.
        await asyncio.shield(response.aclose())
        spawn(call_finish(call))
