"""The response cache on the relay: a chat call whose key has the cache on is looked up by the fingerprint of
its canonical request (after routing) in its scope; a hit is answered from the stored answer, rendered in the
client's dialect and mode, and a complete answer of a miss is stored once the client has it.

A hit still takes one request from the key's requests per minute (no tokens, no concurrency slot, no budget)
and is booked as a usage record with `cache_hit`, the original answer's tokens, a cost of 0 and the cost it
saved. Only a complete answer is stored: never one that ended in an error, was cut off (client gone, upstream
dropped, gateway stopping), was cut short by a cap the client did not ask for, or is larger than
GATEWAY_CACHE_MAX_BYTES. Every chat answer says what happened in `x-gateway-cache: hit | miss | bypass`.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from aigateway.errors import GatewayError, bad_request
from aigateway.metrics import metrics_cache, metrics_cache_stored
from providers.dialects.canonical import Finish, Usage
from providers.dialects.replay import (
    Answer,
    AnswerUnreadable,
    answer_decode,
    answer_encode,
    answer_events,
    content_event,
    request_fingerprint,
)
from providers.response_cache import (
    cache_entry_pack,
    cache_entry_unpack,
    cache_get,
    cache_key,
    cache_put,
    cache_scope,
)

if TYPE_CHECKING:
    from streaming.relay import RelayCall

logger = logging.getLogger(__name__)

# The client's say, per request, in this header: look up and store (the default), `no-cache` (store the new
# answer without looking), or `no-store` (neither).
DIRECTIVE_HEADER = "x-gateway-cache"
_DIRECTIVES = ("no-cache", "no-store")
# How long storing an answer waits after its call ended (see cache_store).
STORE_DELAY_SECONDS = 0.002


@dataclass(slots=True)
class CachePlan:
    """What the cache does for one call: its entry's key and TTL, whether to look it up and to store the
    answer, and the model the fingerprint names (an answer a fallback model gave is not stored under it)."""

    key: str
    ttl: int
    lookup: bool
    store: bool
    model: str


def cache_directive(headers) -> str:
    """The client's cache directive ("" for none); a 400 naming the allowed values for anything else."""
    value = headers.get(DIRECTIVE_HEADER)
    if value is None:
        return ""
    value = value.strip().lower()
    if value and value not in _DIRECTIVES:
        raise bad_request(
            f"the {DIRECTIVE_HEADER} header must be 'no-cache' or 'no-store', got '{value[:64]}'",
            param=DIRECTIVE_HEADER,
        )
    return value


def cache_plan(call: "RelayCall", directive: str) -> None:
    """Decide what the cache does for `call` (call.cache; its result starts as "bypass"). Off when the key's
    TTL is 0, for what is not a chat completion, for several choices at once, with `no-store`, and for a
    request the canonical model cannot read (it is relayed as before, uncached)."""
    call.cache_result = "bypass"
    ttl = call.ctx.cache_ttl
    if ttl <= 0 or call.operation != "chat" or directive == "no-store":
        return
    try:
        request = call.canonical()
        if request.choices != 1:
            return
        fingerprint = request_fingerprint(request, model=call.model, body=call.body)
    except (GatewayError, ValueError, TypeError) as exc:
        logger.info("request %s: not cached, its request cannot be fingerprinted: %s", call.request_id, exc)
        return
    scope = cache_scope(team_id=call.ctx.team_id, owner_id=call.ctx.owner_id)
    call.cache = CachePlan(
        key=cache_key(scope=scope, model=call.model, fingerprint=fingerprint),
        ttl=ttl,
        lookup=directive != "no-cache",
        store=True,
        model=call.model,
    )
    call.cache_events = []


def cache_key_with_admission(call: "RelayCall") -> str | None:
    """The entry the admission script looks up in its own round trip: the call's, when it looks one up and
    the cache lives in the gateway's Redis (a separate cache Redis costs a round trip of its own, cache_lookup)."""
    plan = call.cache
    if plan is None or not plan.lookup or settings.GATEWAY_CACHE_REDIS_URL:
        return None
    return plan.key


async def cache_lookup(call: "RelayCall") -> bytes | None:
    """The stored entry of `call` read from a separate cache Redis (GATEWAY_CACHE_REDIS_URL), or None. A Redis
    that cannot be reached is a miss: the provider answers instead."""
    plan = call.cache
    if plan is None or not plan.lookup or not settings.GATEWAY_CACHE_REDIS_URL:
        return None
    try:
        return await cache_get(plan.key)
    except Exception as exc:
        logger.warning("request %s: response cache lookup failed: %s", call.request_id, type(exc).__name__)
        return None


def cache_found(call: "RelayCall", packed: bytes | None) -> bool:
    """Take the entry the lookup found (None: nothing) as `call`'s answer: True for a hit (`call.cache_hit`, the
    answer in `call.cache_answer`, booked as a hit), False for a miss, an unreadable entry included. Counts the
    call's result in the metrics (a bypass too)."""
    if not call.cache_result:
        return False  # the cache does not apply to this call (not a chat completion)
    plan = call.cache
    if plan is None or not plan.lookup:
        metrics_cache("bypass")
        return False
    entry = cache_entry_unpack(packed) if packed else None
    if entry is not None:
        meta, encoded = entry
        try:
            answer = answer_decode(encoded)
        except AnswerUnreadable as exc:
            logger.warning("request %s: unreadable response cache entry: %s", call.request_id, exc)
        else:
            call.cache_result = "hit"
            metrics_cache("hit")
            _hit_booked(call, meta, answer)
            return True
    call.cache_result = "miss"
    metrics_cache("miss")
    return False


def _hit_booked(call: "RelayCall", meta: dict, answer: Answer) -> None:
    """What the books get for a hit: the original answer's tokens, no cost, what it saved."""
    call.cache_hit = True
    call.cache_answer = answer
    call.usage = answer.usage
    call.hit_estimated = answer.estimated
    saved = meta.get("cost")
    call.cost_saved = saved if isinstance(saved, str) else "0"
    call.answered = True
    finish = next((event for event in reversed(answer.events) if isinstance(event, Finish)), None)
    call.finish_reason = finish.reason if finish is not None else None
    call.cache_events = None  # nothing to store


def _cap_cut_it(call: "RelayCall") -> bool:
    """An answer that stopped at an output cap the client did not ask for (its tier's, a budget's): another
    key of the same scope may ask the same with a larger cap."""
    if call.finish_reason != "length":
        return False
    sent = call.output_cap if call.output_cap is not None else call.ctx.max_output_tokens
    if sent is None:
        return False
    asked = call.canonical().max_tokens
    return asked is None or asked > sent


def cache_collect(call: "RelayCall", events: list) -> None:
    """Keep a streamed answer's content events for the cache, as they pass. Past eight times the entry limit
    of text (an answer that could not be stored even compressed) they are dropped, and the answer is not kept."""
    for event in events:
        if content_event(event):
            call.cache_events.append(event)
            call.cache_text_bytes += len(getattr(event, "text", "") or getattr(event, "arguments", ""))
    if call.cache_text_bytes > 8 * settings.GATEWAY_CACHE_MAX_BYTES:
        call.cache_events = None


def cache_answer_from_reply(call: "RelayCall", upstream, data: dict, reply=None) -> None:
    """Keep a complete (non-streamed) answer for the cache and the request log: `reply` as the provider's
    dialect parsed it, or its JSON `data` (an answer relayed as it came). Read later (cache_answer_read), after
    the client has its answer: a miss adds no parsing before it."""
    call.cache_reply = (upstream, data, reply)


def cache_answer_read(call: "RelayCall") -> None:
    """The kept complete answer as content events (call.cache_events) and its finish reason; one the canonical
    model cannot read is not kept."""
    if call.cache_reply is None:
        return
    upstream, data, reply = call.cache_reply
    call.cache_reply = None
    try:
        reply = reply if reply is not None else upstream.parse_response(data)
        call.cache_events = answer_events(reply)
    except Exception as exc:
        logger.info("request %s: answer not cached, it cannot be read: %s", call.request_id, type(exc).__name__)
        call.cache_events = None
        return
    call.finish_reason = reply.finish_reason


async def cache_store(call: "RelayCall", usage: Usage, estimated: bool, cost: str | None) -> None:
    """Store `call`'s answer when the cache keeps it (see the module's docstring); never raises."""
    plan = call.cache
    if plan is None or not plan.store or call.cache_hit:
        return
    if not call.stream:
        # A complete answer's call ends before its response is sent: the work here (reading the answer,
        # compressing it, the Redis write) waits until the response is on its way, so a miss costs its client
        # nothing. A stream's client has had every byte by now.
        await asyncio.sleep(STORE_DELAY_SECONDS)
    cache_answer_read(call)
    if call.cache_events is None or not call.finished or call.status != 200 or call.error_type:
        return
    if call.model != plan.model:
        return
    if call.finish_reason is None or _cap_cut_it(call):
        return
    try:
        meta = {"cost": cost or "0", "model": call.model, "stored_at": time.time()}
        packed = cache_entry_pack(meta, answer_encode(Answer(call.cache_events, usage, estimated)))
        if packed is None:
            logger.info("request %s: answer larger than the response cache's entry limit; not stored", call.request_id)
            return
        await cache_put(plan.key, packed, ttl=plan.ttl)
        metrics_cache_stored(call.model, len(packed))
    except Exception as exc:
        logger.warning("request %s: response cache store failed: %s", call.request_id, type(exc).__name__)
