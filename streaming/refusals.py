"""Refused requests, made visible: every 4xx the gateway itself answers on an API door is counted in
/metrics (gateway_refusals_total, by status, code and key prefix), and a known key's refusals that concern
what the key may do - its rate limits and budgets (429), the models it may use (403), the size of what it
sends (413) - are usage records of their own: their status and error code, no tokens, no cost, pushed
through the usage queue like any call (one Redis write, never the database on the request path).

Not recorded: refusals without a known key (401: there is no one to book them to), and refusals of the
request's form rather than of the key (400 bad body, 404 unknown model or path, 405, 415): a client's
typo is counted in the metrics, not kept in the books. Errors that come from a provider (`upstream_*`)
are not refusals: the relay records those calls itself.
"""

from accounts.context import KeyContext
from accounts.models import UsageRecord
from accounts.usage import usage_record
from aigateway.errors import GatewayError
from aigateway.logs import request_log
from aigateway.metrics import metrics_refusal
from providers.dialects.canonical import Usage
from streaming.meter import StreamMeter
from streaming.relay import RelayCall, call_event, new_request_id, spawn

# The error codes whose refusals become usage records (a known key's only).
RECORDED_CODES = frozenset({"rate_limit_exceeded", "budget_exceeded", "model_not_allowed", "request_too_large"})
# A record's model when the request's model was never read (a body refused for its size).
UNREAD_MODEL = "(unknown)"
_MODEL_MAX = UsageRecord._meta.get_field("model").max_length
# A compare request names its models in a list: at most this many go into a refusal's model field.
_MODELS_NAMED = 16


def is_refusal(error: GatewayError) -> bool:
    """A 4xx the gateway answered itself: not a provider's error passed on, not a client that left (499)."""
    return 400 <= error.status < 499 and not error.code.startswith("upstream_")


def refusal_count(error: GatewayError, ctx: KeyContext | None) -> bool:
    """Count `error` in the metrics if it is a refusal; whether it is one to record (a known key's, of a
    recorded kind)."""
    if not is_refusal(error):
        return False
    metrics_refusal(error.status, error.code, ctx.key_prefix if ctx is not None else "")
    return ctx is not None and error.code in RECORDED_CODES


def refusal_record(call: RelayCall, error: GatewayError) -> None:
    """Book `call`, refused with `error` before any provider was asked: a usage event with the error's status
    and code and no tokens, queued in the background (the answer does not wait for it), and its request line."""
    call.status, call.error_type = error.status, error.code
    event = call_event(call, Usage(), False)
    event.update(call.meter.summary())
    request_log(event, key_prefix=call.ctx.key_prefix)
    spawn(usage_record(event))


def model_sent(body: dict | None) -> str:
    """The model a request named, cut to the record's field: `model`, or a compare request's `models`
    joined with commas; UNREAD_MODEL when there is none (the body was not read, or names none)."""
    model = body.get("model") if body else None
    if not isinstance(model, str) or not model:
        models = body.get("models") if body else None
        names = [name for name in models[:_MODELS_NAMED] if isinstance(name, str)] if isinstance(models, list) else []
        model = ",".join(names)
    return model[:_MODEL_MAX] if model else UNREAD_MODEL


def refusal_note(
    error: GatewayError,
    ctx: KeyContext | None,
    *,
    endpoint: str | None,
    body: dict | None = None,
    request_id: str | None = None,
    started: float | None = None,
) -> str | None:
    """Count `error` if it is a refusal, and record it under `endpoint` (a door's usage endpoint; None for
    doors whose calls are not booked) when `ctx`, the key, is known and the refusal is of a recorded kind.
    `body`: the request's JSON, if read; `request_id`: the id the client was given (a new one if None);
    `started`: when the request reached the gateway (perf_counter). Returns the id it was recorded under."""
    if not refusal_count(error, ctx) or endpoint is None:
        return None
    call = RelayCall(
        request_id=request_id or new_request_id(),
        ctx=ctx,
        endpoint=endpoint,
        model=model_sent(body),
        body={},
        stream=body.get("stream") is True if body else False,
        client_wants_usage=False,
        meter=StreamMeter(started),
    )
    refusal_record(call, error)
    return call.request_id


def request_refused(request, error: GatewayError, *, endpoint: str | None, started: float | None = None) -> None:
    """An HTTP API request answered with `error` (see refusal_note), under the request's own id. The edge
    notes what it learns of the request as it goes: its key's context (`gateway_key`), its JSON body
    (`gateway_body`)."""
    refusal_note(
        error,
        getattr(request, "gateway_key", None),
        endpoint=endpoint,
        body=getattr(request, "gateway_body", None),
        request_id=request.gateway_request_id,
        started=started,
    )
