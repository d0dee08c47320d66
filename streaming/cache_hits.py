"""Answering a chat call from the response cache (see streaming.cache): the stored answer rendered in the
client's dialect, streamed chunk for chunk or whole. The call was admitted and booked as a hit by call_admit."""

import orjson
from django.http import HttpResponse

from providers.dialects.namespaces import client_names, client_parts
from providers.dialects.replay import Answer
from streaming.relay import STREAM_HEADERS, RelayCall, call_end, response_snapshot, stream_response


async def cache_hit_answer(call: RelayCall) -> HttpResponse:
    """A hit answered over HTTP: the stored answer streamed as the client's dialect streams, or whole."""
    answer = call.cache_answer
    headers = call.headers()
    if call.stream:
        return stream_response(cache_replay(call, answer), {**STREAM_HEADERS, **headers})
    try:
        reply = answer.response()
        namespaced = call.canonical().namespaced_tools
        if namespaced:
            reply.parts = client_parts(reply.parts, namespaced)
        data = call.dialect.render_response(reply, model=call.response_model)
        if call.response_fields:
            data.update(call.response_fields)
        if call.store is not None:
            call.response_object = data  # a stored response answered from the cache is stored all the same
        body = orjson.dumps(data)
        call.meter.sent()
        call.finished = True
    finally:
        if call.finished:
            await call_end(call)
        else:
            await call_end(call, status=500, error_type="internal_error")
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
        if call.response_fields:
            renderer.response_fields = call.response_fields
        events = answer.stream_events()
        namespaced = call.canonical().namespaced_tools
        if namespaced:
            # Stored as the provider called them (a translated answer): under the client's names again.
            events = client_names(events, namespaced)
        for event in events:
            for out in renderer.render(event):
                call.meter.sent()
                if call.store is not None:
                    response_snapshot(call, out)
                yield out
        for out in renderer.close():
            call.meter.sent()
            if call.store is not None:
                response_snapshot(call, out)
            yield out
        call.finished = True
    finally:
        ending = call_end(call, status=499, error_type="client_disconnected")
        if call.finished:
            await ending
