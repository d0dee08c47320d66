"""Background responses (`background: true` on /v1/responses): the call runs to completion without a client,
its events buffered like a resumable stream's, polled with GET /v1/responses/{id}, resumed with
`?stream=true&starting_after=N` from any gateway process, and stopped with POST /v1/responses/{id}/cancel.

The call is admitted, limited and booked like any other before the answer comes back; it then runs as a
background resumable stream (streaming.resumable) whose id is the response's. Its state while it runs (queued,
in_progress) lives in Redis under `gw:bg:<id>`; its final response is the stored response (streaming.responses_store),
which the relay writes when the call finishes: completed, incomplete, failed, or cancelled with the tokens so far.
"""

import asyncio
import time
from contextlib import aclosing

import orjson
from django.http import HttpResponse

from accounts.context import KeyContext
from aigateway.errors import GatewayError
from aigateway.redis import redis_async
from providers.dialects.responses import response_skeleton
from providers.dialects.sse import sse_encode
from streaming.relay import STREAM_HEADERS, RelayCall, relay_open, stream_response
from streaming.resumable import ResumableStream, resumable_cancel, resumable_check, sse_live, sse_replay

_STATE_PREFIX = "gw:bg:"
# A background response's running state outlives any run it could have (the store has the final one).
STATE_TTL_SECONDS = 24 * 3600
TERMINAL = ("completed", "incomplete", "failed", "cancelled")


def _state_key(response_id: str) -> str:
    return _STATE_PREFIX + response_id


def background_body(body: dict) -> dict:
    """What the call sends for a background request: always streamed (so a cancel knows the tokens so far and
    a client may stream it later), without `background` (the provider must not run it in its own background)."""
    out = {name: value for name, value in body.items() if name != "background"}
    out["stream"] = True
    return out


async def background_answer(call: RelayCall, *, client_stream: bool) -> HttpResponse:
    """Start an admitted background call and answer at once: the queued response (JSON), or with `stream` its
    events as they come (the client may leave; the call goes on)."""
    response_id = call.response_fields["id"]
    queued = response_skeleton(
        response_id=response_id, model=call.response_model, status="queued", **call.response_fields
    )
    # What the store keeps if no provider ever answers (the call then failed, see the store's entry).
    call.response_object = queued
    call.body_started = True
    await _state_set(call.ctx, response_id, queued)
    stream = await ResumableStream.open(
        _source(call, queued),
        ctx=call.ctx,
        stream_id=response_id,
        background=True,
        on_stop=lambda reason: _stopped(call, reason),
    )
    if client_stream:
        return stream_response(
            sse_live(stream), {**STREAM_HEADERS, **call.headers(), "x-gateway-stream-id": response_id}
        )
    return HttpResponse(orjson.dumps(queued), content_type="application/json", headers=call.headers())


def _stopped(call: RelayCall, reason: str) -> None:
    call.stop_error_type = "cancelled"
    call.response_object = {**(call.response_object or {}), "status": "cancelled"}


async def _source(call: RelayCall, queued: dict):
    try:
        body = await relay_open(call)
    except GatewayError as error:
        # Booked already (relay_open ends a call that fails); the stream says it as Responses streams do.
        failed = {**queued, "status": "failed", "error": {"code": error.code, "message": error.message}}
        yield sse_encode(orjson.dumps({"type": "response.failed", "response": failed, "sequence_number": 0}),
                         event="response.failed")  # fmt: skip
        return
    await _state_update(call.response_fields["id"], "in_progress")
    async with aclosing(body) as chunks:
        async for chunk in chunks:
            yield chunk


async def _state_set(ctx: KeyContext, response_id: str, response: dict) -> None:
    state = {"owner_id": ctx.owner_id, "key_id": ctx.key_id, "status": response["status"]}
    state["response"] = orjson.dumps(response)
    async with redis_async().pipeline(transaction=False) as pipe:
        pipe.hset(_state_key(response_id), mapping=state)
        pipe.expire(_state_key(response_id), STATE_TTL_SECONDS)
        await pipe.execute()


async def _state_update(response_id: str, status: str) -> None:
    try:
        await redis_async().hset(_state_key(response_id), "status", status)
    except Exception:  # a poll then says queued a little longer
        pass


async def _state(ctx: KeyContext, response_id: str) -> dict | None:
    raw = await redis_async().hgetall(_state_key(response_id))
    if not raw or raw.get(b"owner_id") != str(ctx.owner_id).encode():
        return None
    response = orjson.loads(raw[b"response"])
    response["status"] = raw[b"status"].decode()
    return response


async def background_lookup(ctx: KeyContext, response_id: str) -> dict | None:
    """The response object of a background response of `ctx`'s owner still queued or in progress (its status
    and what it has so far), or None when there is none by that id (finished ones are in the store)."""
    return await _state(ctx, response_id)


def _starting_after(request) -> int:
    raw = request.GET.get("starting_after")
    if raw is None or raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise GatewayError(400, "invalid_request", "'starting_after' must be a non-negative integer",
                           param="starting_after")  # fmt: skip
    # Sequence numbers count from 0, the buffer's event ids from 1.
    return int(raw) + 1


async def background_stream_response(request, ctx: KeyContext, response_id: str) -> HttpResponse:
    """GET /v1/responses/{id}?stream=true[&starting_after=N]: a background response's events after sequence
    number N (all without it), then the live rest, from any gateway process, while its stream is buffered (it
    runs, or ended less than GATEWAY_RESUME_GRACE_SECONDS ago)."""
    after = _starting_after(request)
    try:
        await resumable_check(response_id, ctx=ctx, after=after, scope="owner")
    except GatewayError as error:
        if error.status == 404:
            raise GatewayError(
                404,
                "not_found",
                f"response '{response_id}' has no stream to resume: only a background response can be streamed "
                "again, while it runs and shortly after; GET it without stream=true for its result",
            ) from None
        raise
    headers = {**STREAM_HEADERS, "x-request-id": request.gateway_request_id, "x-gateway-stream-id": response_id}
    return stream_response(sse_replay(response_id, after), headers)


async def background_cancel(ctx: KeyContext, response_id: str, *, stored) -> dict:
    """POST /v1/responses/{id}/cancel: stop a background response (its upstream closed, its usage booked as
    cancelled with the tokens so far) and return it. `stored(response_id)` reads the store (the final response
    once written). A response already finished is returned as it is."""
    state = await _state(ctx, response_id)
    if state is None:
        finished = await stored(response_id)
        if finished is None:
            raise GatewayError(404, "not_found", f"no response with id '{response_id}'", param="response_id")
        raise GatewayError(
            400, "invalid_request", f"response '{response_id}' was not created with background: true; only a "
            "background response can be cancelled", param="response_id",
        )  # fmt: skip
    finished = await stored(response_id)
    if finished is not None and finished.get("status") in TERMINAL:
        return finished
    await resumable_cancel(response_id)
    # The run books itself and stores its final response within a tick of the cancel (at once in this process).
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        finished = await stored(response_id)
        if finished is not None and finished.get("status") in TERMINAL:
            return finished
        await asyncio.sleep(0.05)
    return {**state, "status": "cancelled"}
