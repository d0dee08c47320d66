"""Rate limits and quotas on the hot path: one Redis round trip (a Lua script) per admission and per settle.

Requests and tokens per minute are token buckets refilled continuously over 60 seconds (GCRA: one stored
timestamp per bucket), so a key never gets a double burst at a window boundary and `retry_after` is exact.
Concurrency is a sorted set of leases scored by expiry, so a process that dies mid-request frees its leases
after GATEWAY_LEASE_TTL_SECONDS. Daily tokens are a plain counter per UTC day. Budgets in money are checked
and reserved in the same script (see accounts.budgets): the request's maximum cost against every budget that
applies, replaced by its real cost when it settles.
"""

import asyncio
import hashlib
import logging
import math
import secrets
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from redis.exceptions import NoScriptError, RedisError

from accounts.budgets import BudgetRef, budget_counters, budget_refusal_message, budgets_seed, from_units
from accounts.context import KeyContext
from accounts.usage import USAGE_INFLIGHT_DEADLINES_KEY, USAGE_INFLIGHT_KEY, usage_batched_script, usage_lost_after
from aigateway.errors import GatewayError
from aigateway.redis import RedisPoolExhausted, redis_async, redis_pool_exhausted_error, redis_sync

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
DAY_SECONDS = 86400
DEFAULT_LEASE_TTL_SECONDS = 300
_REDIS_DOWN_LOG_INTERVAL = 10.0
_STORE_DOWN_RETRY_AFTER_SECONDS = 2

# Order matters: the admit script reports the first limit that refused, with this index.
# Lease releases started while an admission was being cancelled.
_cleanups: set[asyncio.Task] = set()

_REFUSAL_CODES = {1: "concurrency", 2: "requests", 3: "tokens", 4: "daily_tokens", 5: "tokens", 6: "budget_exceeded"}
_BUDGET_REFUSED, _BUDGET_MISSING = 6, 7
# Seeding a missing budget counter and asking again: at most once per budget, plus a period turning meanwhile.
_SEED_ROUNDS = 3


class _LuaScript:
    """EVALSHA with a fallback to EVAL (which also caches the script) when the server answers NOSCRIPT."""

    def __init__(self, filename: str):
        self.source = (Path(__file__).parent / "lua" / filename).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, client, keys: list[str], args: list) -> object:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    def call_sync(self, client, keys: list[str], args: list) -> object:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    def send(self, keys: list[str], args: list) -> tuple[asyncio.Future, list, list]:
        """Queue the call in the hot path's usage batch (accounts.usage): one round trip shared with the
        other requests' settlements and usage events. Await its reply with `answer`."""
        return usage_batched_script(self.sha, keys, args), keys, args

    async def answer(self, sent: tuple[asyncio.Future, list, list]) -> object:
        future, keys, args = sent
        try:
            return await future
        except NoScriptError:
            return await redis_async().eval(self.source, len(keys), *keys, *args)


_ADMIT = _LuaScript("limits_admit.lua")
_SETTLE = _LuaScript("limits_settle.lua")
_LEASE_REFRESH = _LuaScript("limits_lease_refresh.lua")
_REMAINING = _LuaScript("limits_remaining.lua")


@dataclass
class Admission:
    allowed: bool
    code: str | None
    message: str
    retry_after: float | None
    headers: dict[str, str]
    lease_id: str | None
    reserved_tokens: int
    # UTC day number the daily reservation was booked on, so settle corrects that day's counter.
    day: int | None = field(default=None, repr=False)
    # When each window ("requests", "tokens") is full again, in ms after `issued_at` (time.time()).
    resets_ms: dict[str, float] = field(default_factory=dict, repr=False)
    issued_at: float = field(default=0.0, repr=False)
    # The request's usage "started" marker was stored with the admission.
    marked: bool = field(default=False, repr=False)
    # Budgets: the counters the maximum cost was reserved on (units of 1e-8), for the settlement.
    budget_keys: tuple[str, ...] = field(default=(), repr=False)
    budget_reserved: int = field(default=0, repr=False)
    # The budget that refused (code "budget_exceeded").
    budget: BudgetRef | None = field(default=None, repr=False)
    # The response cache entry the admission found (limits_admit's `cache_key`): the request is a hit,
    # admitted on its requests per minute alone, holding nothing to settle.
    cached: bytes | None = field(default=None, repr=False)

    def headers_for(self, dialect_name: str) -> dict[str, str]:
        """The limit headers in the client's dialect: OpenAI's x-ratelimit-*, or Anthropic's
        anthropic-ratelimit-* with RFC 3339 reset times."""
        if dialect_name != "anthropic":
            return self.headers
        out = {}
        for unit in ("requests", "tokens"):
            limit = self.headers.get(f"x-ratelimit-limit-{unit}")
            if limit is None:
                continue
            reset = datetime.fromtimestamp(self.issued_at + self.resets_ms.get(unit, 0) / 1000, tz=UTC)
            out[f"anthropic-ratelimit-{unit}-limit"] = limit
            out[f"anthropic-ratelimit-{unit}-remaining"] = self.headers[f"x-ratelimit-remaining-{unit}"]
            out[f"anthropic-ratelimit-{unit}-reset"] = reset.isoformat(timespec="seconds").replace("+00:00", "Z")
        if "retry-after" in self.headers:
            out["retry-after"] = self.headers["retry-after"]
        return out


def _release_unowned(keys: list[str], args: list, lease_id: str | None) -> None:
    """Free what the admission of a caller now gone took, in the background: its lease, the budget
    reservation that came with it, and its usage marker (the caller's own finish records the call, or
    nothing is owed; a marker the script stored after that record was pushed would otherwise stay behind
    and later be booked as a lost call)."""
    request_id, marker = args[8], args[9]
    if lease_id is None and not marker:
        return
    # The budget counters follow the six fixed keys; a response cache key may follow them.
    budget_keys = keys[6 : 6 + (args[11] if len(args) > 11 else 0)]
    reserve = args[12] if budget_keys else 0
    release = _release(keys, request_id if marker else None, lease_id, budget_keys, reserve)
    _cleanups.add(cleanup := asyncio.ensure_future(release))
    cleanup.add_done_callback(_cleanups.discard)


async def _release(
    keys: list[str], request_id: str | None, lease_id: str | None, budget_keys: list[str], reserve: int
) -> None:
    client = redis_async()
    try:
        if lease_id is not None:
            args = [lease_id, 0, 0, 0]
            if budget_keys:
                args += [len(budget_keys), reserve, 0]
            await _SETTLE(client, [keys[0], keys[2], keys[3], *budget_keys], args)
        if request_id:
            pipe = client.pipeline(transaction=True)
            pipe.hdel(keys[4], request_id)
            pipe.zrem(keys[5], request_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        # The lease expires with its TTL; the marker is reconciled by the usage flush.
        _warn_redis_down("release", exc, "left to expire")


class _QueuedAdmission:
    __slots__ = ("keys", "args", "lease_id", "future", "sent")

    def __init__(self, keys: list[str], args: list, lease_id: str | None) -> None:
        self.keys = keys
        self.args = args
        self.lease_id = lease_id
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.sent = False


class _Admissions:
    """The admissions of one event loop. When none is on its way, a request sends its own at once: no task
    switch, so an idle gateway's first byte does not wait (measured: queued behind a batch task, +0.3 ms).
    While one is on its way, the next ones gather and go together in one pipeline when it returns: under
    load, one round trip (and one socket write) for many requests instead of one each.

    A caller cancelled meanwhile (its client left) holds no lease afterwards: not sent yet, its script is
    not sent at all; sent, the lease it may have taken is freed once the script has answered (a release sent
    at once could overtake the script on another connection)."""

    def __init__(self) -> None:
        self.busy = False
        self.queued: list[_QueuedAdmission] = []

    async def admit(self, keys: list[str], args: list, lease_id: str | None) -> list:
        if self.busy:
            return await self._queued_admit(_QueuedAdmission(keys, args, lease_id))
        self.busy = True
        try:
            result = await _ADMIT(redis_async(), keys, args)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py completes a call already under way and swallows a cancellation that came meanwhile
                # (the client left): honour it, or the request would run on for nobody, holding its lease.
                raise asyncio.CancelledError
            return result
        except asyncio.CancelledError:
            _release_unowned(keys, args, lease_id)
            raise
        finally:
            self._next()

    async def _queued_admit(self, entry: _QueuedAdmission) -> list:
        self.queued.append(entry)
        try:
            return await entry.future
        except NoScriptError:
            return await _ADMIT(redis_async(), entry.keys, entry.args)
        except asyncio.CancelledError:
            if not entry.sent:
                self.queued.remove(entry)
            elif entry.future.done() and not entry.future.cancelled() and entry.future.exception() is None:
                # Answered in the same instant the caller was cancelled: what it took has no owner.
                _release_unowned(entry.keys, entry.args, entry.lease_id)
            raise

    def _next(self) -> None:
        if self.queued:
            _cleanups.add(task := asyncio.ensure_future(self._send_queued()))
            task.add_done_callback(_cleanups.discard)
        else:
            self.busy = False

    async def _send_queued(self) -> None:
        try:
            while self.queued:
                batch, self.queued = self.queued, []
                pipe = redis_async().pipeline(transaction=True)
                for entry in batch:
                    entry.sent = True
                    pipe.evalsha(_ADMIT.sha, len(entry.keys), *entry.keys, *entry.args)
                try:
                    # Per-command errors come back as values: one NOSCRIPT must not fail the others.
                    results = await pipe.execute(raise_on_error=False)
                except Exception as exc:
                    results = [exc] * len(batch)
                except BaseException:
                    for entry in batch:
                        if not entry.future.done():
                            entry.future.set_exception(RedisError("admission batch interrupted"))
                    raise
                for entry, result in zip(batch, results, strict=True):
                    if not entry.future.cancelled():
                        if isinstance(result, Exception):
                            entry.future.set_exception(result)
                        else:
                            entry.future.set_result(result)
                    elif not isinstance(result, Exception):
                        _release_unowned(entry.keys, entry.args, entry.lease_id)
        finally:
            self.busy = False


_admission_senders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Admissions]" = weakref.WeakKeyDictionary()


def _admissions() -> _Admissions:
    loop = asyncio.get_running_loop()
    sender = _admission_senders.get(loop)
    if sender is None:
        sender = _admission_senders[loop] = _Admissions()
    return sender


def _keys(key_id: int, day: int) -> list[str]:
    # One hash tag per API key: every key a script touches lives in the same cluster slot.
    base = f"gw:rl:{{{key_id}}}"
    return [f"{base}:leases", f"{base}:req", f"{base}:tok", f"{base}:day:{day}"]


def _utc_day() -> int:
    return int(time.time() // DAY_SECONDS)


def _lease_ttl_ms() -> int:
    return int(float(getattr(settings, "GATEWAY_LEASE_TTL_SECONDS", DEFAULT_LEASE_TTL_SECONDS)) * 1000)


def _needs_lease(ctx: KeyContext) -> bool:
    """A lease is what settle releases; keys whose only limit is rpm have nothing to settle."""
    return bool(ctx.max_concurrent or ctx.tpm or ctx.daily_tokens or ctx.budgets)


def _has_limits(ctx: KeyContext) -> bool:
    return bool(ctx.rpm or ctx.tpm or ctx.max_concurrent or ctx.daily_tokens or ctx.budgets)


def format_reset(milliseconds: float) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: "120ms", "6s", "1m30s", "1h0m0s"."""
    ms = max(0, math.ceil(milliseconds))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _format_seconds(seconds: float) -> str:
    return format_reset(seconds * 1000) if seconds < 1 else format_reset(math.ceil(seconds) * 1000)


def _headers(ctx: KeyContext, result: list) -> dict[str, str]:
    _, _, req_remaining, req_reset_ms, tok_remaining, tok_reset_ms = result[:6]
    headers = {}
    if ctx.rpm:
        headers["x-ratelimit-limit-requests"] = str(ctx.rpm)
        headers["x-ratelimit-remaining-requests"] = str(req_remaining)
        headers["x-ratelimit-reset-requests"] = format_reset(req_reset_ms)
    if ctx.tpm:
        headers["x-ratelimit-limit-tokens"] = str(ctx.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(tok_remaining)
        headers["x-ratelimit-reset-tokens"] = format_reset(tok_reset_ms)
    return headers


def _refusal_message(ctx: KeyContext, code_index: int, retry_after: float | None, *, estimate: int, used: int) -> str:
    retry = f" Retry after {_format_seconds(retry_after)}." if retry_after is not None else ""
    if code_index == 1:
        return f"Too many concurrent requests (limit {ctx.max_concurrent}).{retry}"
    if code_index == 2:
        return f"Rate limit reached for requests per minute (limit {ctx.rpm}).{retry}"
    if code_index == 3:
        return f"Rate limit reached for tokens per minute (limit {ctx.tpm}, this request needs ~{estimate}).{retry}"
    if code_index == 5:
        return (
            f"Request too large for tokens per minute (limit {ctx.tpm}, this request needs ~{estimate}). "
            "Reduce the prompt or max_tokens."
        )
    return f"Daily token quota reached (limit {ctx.daily_tokens}, used {used}, this request needs ~{estimate}).{retry}"


_last_redis_warning = 0.0


def _warn_redis_down(action: str, exc: Exception, outcome: str) -> None:
    global _last_redis_warning
    now = time.monotonic()
    if now - _last_redis_warning >= _REDIS_DOWN_LOG_INTERVAL:
        _last_redis_warning = now
        logger.warning("rate limits: redis unavailable during %s, %s: %s", action, outcome, type(exc).__name__)


def limits_store_unavailable() -> GatewayError:
    """What a client of a key with limits gets while the limits cannot be checked (fail closed)."""
    return GatewayError(
        503,
        "limits_unavailable",
        "rate-limit store unavailable: the request was not admitted; retry shortly",
        headers={"retry-after": str(_STORE_DOWN_RETRY_AFTER_SECONDS)},
    )


def _unlimited() -> Admission:
    return Admission(
        allowed=True, code=None, message="", retry_after=None, headers={}, lease_id=None, reserved_tokens=0
    )


async def _admit_script(
    ctx: KeyContext, day: int, args: list, lease_id: str | None, extra_keys: list[str] | None = None
) -> list | None:
    """The admission script's answer for `ctx` (one round trip, gathered with others under load); None when
    Redis cannot be reached and GATEWAY_LIMITS_FAIL_OPEN lets the call through, else a 503 GatewayError (also
    when no connection of the process's Redis pool came free in time).
    A cancellation (client gone) frees any lease taken and clears the usage marker stored."""
    keys = [*_keys(ctx.key_id, day), USAGE_INFLIGHT_KEY, USAGE_INFLIGHT_DEADLINES_KEY, *(extra_keys or ())]
    try:
        return await _admissions().admit(keys, args, lease_id)
    except RedisPoolExhausted as exc:
        # Redis is there but this process has more commands waiting than connections: shed the load, even
        # when failing open (letting these through would only add to it).
        _warn_redis_down("admit", exc, "refusing with 503")
        raise redis_pool_exhausted_error() from None
    except (RedisError, OSError) as exc:
        if settings.GATEWAY_LIMITS_FAIL_OPEN:
            _warn_redis_down("admit", exc, "failing open")
            return None
        _warn_redis_down("admit", exc, "refusing with 503")
        raise limits_store_unavailable() from None


async def limits_admit(
    ctx: KeyContext,
    *,
    estimate_tokens: int,
    request_id: str,
    marker: bytes | None = None,
    max_cost_units: int = 0,
    cache_key: str | None = None,
) -> Admission:
    """Check concurrency, requests/min, tokens/min, daily tokens and every budget that applies atomically;
    commit only if all pass. `max_cost_units` (the request's maximum cost, accounts.budgets units) is reserved
    on each budget. An admitted request's usage `marker` is stored in the same step (`Admission.marked`).

    With `cache_key` (a response cache entry in this Redis), the same round trip looks the entry up: found, the
    request is a hit (`Admission.cached`), which takes one request from the requests per minute and nothing
    else. Keys without limits then run the script too (it stores their marker), so a miss costs no extra trip.

    If Redis is unreachable the request is refused with a 503 GatewayError (limits_unavailable), or, with
    GATEWAY_LIMITS_FAIL_OPEN, admitted without limits; either way a warning is logged (at most every 10 s).
    """
    if not _has_limits(ctx) and cache_key is None:
        return _unlimited()
    estimate = max(0, int(estimate_tokens))
    need_lease = _needs_lease(ctx)
    # A random suffix: a client-chosen request id must not let two requests share one lease.
    lease_id = f"{request_id}:{secrets.token_hex(4)}" if need_lease else None
    reserve = max(0, int(max_cost_units)) if ctx.budgets else 0
    for _ in range(_SEED_ROUNDS):
        day = _utc_day()
        args = [
            lease_id or "",
            _lease_ttl_ms(),
            ctx.max_concurrent or 0,
            ctx.rpm or 0,
            ctx.tpm or 0,
            ctx.daily_tokens or 0,
            estimate,
            1 if need_lease else 0,
            request_id,
            marker or "",
            time.time() + usage_lost_after(),
        ]
        budget_keys: tuple[str, ...] = ()
        extra_keys: list[str] = []
        if ctx.budgets:
            budget_keys, ttls = budget_counters(ctx.budgets)
            extra_keys = list(budget_keys)
            args += [len(budget_keys), reserve, *(b.limit_units for b in ctx.budgets), *ttls]
        if cache_key is not None:
            extra_keys.append(cache_key)
        result = await _admit_script(ctx, day, args, lease_id, extra_keys)
        if result is None:
            return _unlimited()
        if result[0] != _BUDGET_MISSING:
            break
        # A counter is missing (a new period, a new budget, a Redis that lost it): seed it from the records.
        await budgets_seed(ctx.budgets)
    else:
        raise limits_store_unavailable()
    code_index, retry_ms, *_ = result
    used = result[6]
    headers = _headers(ctx, result)
    resets = {"requests": result[3], "tokens": result[5]}
    if len(result) > 10:
        return _requests_admission(ctx, result, day)
    if code_index == 0:
        return Admission(
            allowed=True,
            code=None,
            message="",
            retry_after=None,
            headers=headers,
            lease_id=lease_id,
            reserved_tokens=estimate if (ctx.tpm or ctx.daily_tokens) else 0,
            day=day,
            resets_ms=resets,
            issued_at=time.time(),
            marked=bool(marker),
            budget_keys=budget_keys,
            budget_reserved=reserve,
        )
    budget, retry_after = None, None
    if code_index == _BUDGET_REFUSED:
        budget = ctx.budgets[result[7] - 1]
        message = budget_refusal_message(
            budget, spent=from_units(result[8]), reserved=from_units(result[9]), request=from_units(reserve)
        )
    else:
        retry_after = retry_ms / 1000 if retry_ms >= 0 else None
        if retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        message = _refusal_message(ctx, code_index, retry_after, estimate=estimate, used=used)
    return Admission(
        allowed=False,
        code=_REFUSAL_CODES[code_index],
        message=message,
        retry_after=retry_after,
        headers=headers,
        lease_id=None,
        reserved_tokens=0,
        day=day,
        resets_ms=resets,
        issued_at=time.time(),
        budget=budget,
    )


def _requests_admission(ctx: KeyContext, result: list, day: int) -> Admission:
    """The admission of a request counted on its requests per minute only (limits_admit_requests, or a response
    cache hit, whose entry goes in `cached`): no lease, no tokens, only the requests headers."""
    code_index, retry_ms = result[0], result[1]
    headers = {name: value for name, value in _headers(ctx, result).items() if name.endswith("-requests")}
    retry_after = retry_ms / 1000 if code_index and retry_ms >= 0 else None
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    return Admission(
        allowed=code_index == 0,
        code=_REFUSAL_CODES[code_index] if code_index else None,
        message=_refusal_message(ctx, code_index, retry_after, estimate=0, used=0) if code_index else "",
        retry_after=retry_after,
        headers=headers,
        lease_id=None,
        reserved_tokens=0,
        day=day,
        resets_ms={"requests": result[3]},
        issued_at=time.time(),
        cached=result[10] if len(result) > 10 else None,
    )


def _requests_only(rpm: int) -> list:
    """Arguments of the admit script that take one request from a requests bucket and nothing else: no
    lease (nothing to settle), no token reservation, no usage marker."""
    return ["", _lease_ttl_ms(), 0, rpm, 0, 0, 0, 0, "", "", 0]


async def limits_admit_requests(ctx: KeyContext) -> Admission:
    """Count one call that is not a completion (count_tokens) against the key's requests per minute only:
    it shares the bucket of the key's chat calls, but reserves no tokens and takes no concurrency slot.
    One Redis round trip; an admission without a lease (nothing to settle). Redis unreachable: as
    `limits_admit`."""
    if not ctx.rpm:
        return _unlimited()
    day = _utc_day()
    result = await _admit_script(ctx, day, _requests_only(ctx.rpm), None)
    if result is None:
        return _unlimited()
    return _requests_admission(ctx, result, day)


def limits_throttle(*, key_id: int, name: str, per_minute: int) -> float | None:
    """Count one call of a management endpoint (`name`) by a key, at most `per_minute` a minute from a bucket
    of its own, refilled continuously like the requests per minute, shared by every process. None when
    allowed, else the seconds until a call is. Synchronous (DRF views); raises RedisError."""
    keys = [*_keys(key_id, 0), USAGE_INFLIGHT_KEY, USAGE_INFLIGHT_DEADLINES_KEY]
    keys[1] = f"gw:rl:{{{key_id}}}:{name}"
    code_index, retry_ms, *_ = _ADMIT.call_sync(redis_sync(), keys, _requests_only(per_minute))
    return None if code_index == 0 else max(0.001, retry_ms / 1000)


async def limits_settle(
    ctx: KeyContext, admission: Admission, *, actual_tokens: int | None, cost_units: int = 0
) -> None:
    """Release the lease, correct the token counters by (actual - reserved) and replace the budgets'
    reservation by the real cost (`cost_units`); a second call does nothing (but count the cost again)."""
    await limits_settle_sent(limits_settle_send(ctx, admission, actual_tokens=actual_tokens, cost_units=cost_units))


def limits_settle_send(
    ctx: KeyContext, admission: Admission, *, actual_tokens: int | None, cost_units: int = 0
) -> asyncio.Future | None:
    """`limits_settle` in two steps: queue the settlement in this event loop's Redis batch now (so it shares
    the round trip with whatever the caller queues next, e.g. the usage event), await it with
    `limits_settle_sent`. None when there is nothing to settle."""
    if not admission.allowed or admission.lease_id is None:
        return None
    delta = 0 if actual_tokens is None else max(0, int(actual_tokens)) - admission.reserved_tokens
    day = admission.day if admission.day is not None else _utc_day()
    keys = _keys(ctx.key_id, day)
    args = [admission.lease_id, delta, ctx.tpm or 0, ctx.daily_tokens or 0]
    if admission.budget_keys:
        args += [len(admission.budget_keys), admission.budget_reserved, max(0, int(cost_units))]
    return _SETTLE.send([keys[0], keys[2], keys[3], *admission.budget_keys], args)


async def limits_settle_sent(sent: asyncio.Future | None) -> None:
    if sent is None:
        return
    try:
        await _SETTLE.answer(sent)
    except (RedisError, OSError) as exc:
        # The lease expires on its own after the lease TTL.
        _warn_redis_down("settle", exc, "lease left to expire")


async def limits_lease_refresh(ctx: KeyContext, admission: Admission) -> None:
    """Keep a long stream's lease alive for another lease TTL."""
    if not admission.allowed or admission.lease_id is None:
        return
    try:
        await _LEASE_REFRESH(redis_async(), [_keys(ctx.key_id, 0)[0]], [admission.lease_id, _lease_ttl_ms()])
    except (RedisError, OSError) as exc:
        _warn_redis_down("lease refresh", exc, "lease kept until it expires")


async def limits_leases_refresh(admissions: list[tuple[KeyContext, Admission]]) -> None:
    """Keep many calls' leases alive for another lease TTL, in one pipeline (the calls in flight of a
    process, renewed together on a timer)."""
    leases = [(ctx, admission) for ctx, admission in admissions if admission.allowed and admission.lease_id]
    if not leases:
        return
    ttl = _lease_ttl_ms()
    try:
        pipe = redis_async().pipeline(transaction=False)
        for ctx, admission in leases:
            pipe.evalsha(_LEASE_REFRESH.sha, 1, _keys(ctx.key_id, 0)[0], admission.lease_id, ttl)
        results = await pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            # Redis lost its script cache (a restart): once more, one call each, which loads it again.
            for ctx, admission in leases:
                await _LEASE_REFRESH(redis_async(), [_keys(ctx.key_id, 0)[0]], [admission.lease_id, ttl])
    except (RedisError, OSError) as exc:
        _warn_redis_down("lease refresh", exc, "leases kept until they expire")


def _bucket(limit: int | None, tat_ms: float, now_ms: float) -> dict | None:
    if not limit:
        return None
    debt = max(0.0, tat_ms - now_ms)
    interval = WINDOW_SECONDS * 1000 / limit
    remaining = max(0, math.floor((WINDOW_SECONDS * 1000 - debt + min(1, interval / 2)) / interval))
    return {"limit": limit, "remaining": remaining, "reset_seconds": round(debt / 1000, 3)}


async def limits_remaining(ctx: KeyContext) -> dict:
    """What the key has left right now (read-only). A limit that is not set maps to None.

    {"requests": {"limit", "remaining", "reset_seconds"}, "tokens": {...},
     "daily_tokens": {"limit", "used", "remaining", "reset_seconds"}, "concurrent": {"limit", "in_flight"}}
    """
    day = _utc_day()
    now_ms, in_flight, req_tat, tok_tat, daily_used = float(time.time() * 1000), 0, 0.0, 0.0, 0
    if _has_limits(ctx):
        raw = await _REMAINING(redis_async(), _keys(ctx.key_id, day), [])
        now_ms, in_flight, req_tat, tok_tat, daily_used = float(raw[0]), raw[1], float(raw[2]), float(raw[3]), raw[4]
    daily = None
    if ctx.daily_tokens:
        reset_ms = DAY_SECONDS * 1000 - (now_ms % (DAY_SECONDS * 1000))
        daily = {
            "limit": ctx.daily_tokens,
            "used": daily_used,
            "remaining": max(0, ctx.daily_tokens - daily_used),
            "reset_seconds": round(reset_ms / 1000, 3),
        }
    concurrent = {"limit": ctx.max_concurrent, "in_flight": in_flight} if ctx.max_concurrent else None
    return {
        "requests": _bucket(ctx.rpm, req_tat, now_ms),
        "tokens": _bucket(ctx.tpm, tok_tat, now_ms),
        "daily_tokens": daily,
        "concurrent": concurrent,
    }
