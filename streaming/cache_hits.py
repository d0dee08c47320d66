"""Answering a chat call from the response cache (see streaming.cache): the stored answer rendered in the
client's dialect, streamed chunk for chunk or whole, admitted and booked like any call."""

import orjson
from django.http import HttpResponse

from accounts.limits import limits_admit_requests
from aigateway.errors import GatewayError
from providers.dialects.canonical import Finish
from providers.dialects.replay import Answer
from streaming.relay import STREAM_HEADERS, RelayCall, call_end, stream_response


async def cache_hit_admit(call: RelayCall) -> None:
    """A hit takes one request from the key's requests per minute, as any call does; nothing else (no lease,
    no usage marker: it is over in a moment, with nobody else to wait for)."""
    call.admission = await limits_admit_requests(call.ctx)
    if not call.admission.allowed:
        headers = {**call.admission.headers_for(call.dialect.name), "x-request-id": call.request_id}
        raise GatewayError(
            429, "rate_limit_exceeded", call.admission.message, headers=headers, param=call.admission.code
        )


def _hit_booked(call: RelayCall, meta: dict, answer: Answer) -> None:
    """What the books get for a hit: the original answer's tokens, no cost, what it saved."""
    call.cache_hit = True
    call.usage = answer.usage
    call.hit_estimated = answer.estimated
    saved = meta.get("cost")
    call.cost_saved = saved if isinstance(saved, str) else "0"
    call.answered = True
    finish = next((event for event in reversed(answer.events) if isinstance(event, Finish)), None)
    call.finish_reason = finish.reason if finish is not None else None


async def cache_hit_begin(call: RelayCall, meta: dict, answer: Answer) -> None:
    """Admit a hit (a 429 GatewayError when the key's requests per minute are spent) and book it as one."""
    await cache_hit_admit(call)
    _hit_booked(call, meta, answer)


async def cache_hit_answer(call: RelayCall, meta: dict, answer: Answer) -> HttpResponse:
    """A hit answered over HTTP: the stored answer streamed as the client's dialect streams, or whole."""
    await cache_hit_begin(call, meta, answer)
    headers = call.headers()
    if call.stream:
        return stream_response(cache_replay(call, answer), {**STREAM_HEADERS, **headers})
    try:
        body = orjson.dumps(call.dialect.render_response(answer.response(), model=call.response_model))
        call.meter.sent()
        call.finished = True
    finally:
        await call_end(
            call, status=None if call.finished else 500, error_type="" if call.finished else "internal_error"
        )
    return HttpResponse(body, content_type="application/json", headers=headers)


async def cache_replay(call: RelayCall, answer: Answer):
    """The stored answer as the client's stream renders it, chunk for chunk; ends the call however it ends."""
    call.body_started = True
    try:
        renderer = call.dialect.stream_renderer(
            model=call.response_model,
            include_usage=call.client_wants_usage,
            prompt_estimate=answer.usage.prompt_tokens,
        )
        for event in answer.stream_events():
            for out in renderer.render(event):
                call.meter.sent()
                yield out
        for out in renderer.close():
            call.meter.sent()
            yield out
        call.finished = True
    finally:
        ending = call_end(call, status=499, error_type="client_disconnected")
        if call.finished:
            await ending
