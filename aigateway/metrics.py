"""Prometheus metrics: what the relay counts per call, and the `/metrics` page that adds up every worker.

Counts come from the same finished-call event the usage books get (`metrics_record`), so the counters
equal the usage records. The hot path only adds numbers to in-process tallies (about a microsecond a
call); a timer writes them to prometheus-client's multi-process files once per FLUSH_SECONDS through its
public API (a counter's `inc`, a histogram's `observe`), and a scrape writes its own process's tallies
first. Gauges that describe shared state (usage queue, provider
health, breakers) are read from Redis when scraped, so every worker reports the same, exact value.

Refusals (the 4xx answers the gateway gives on its API doors: a bad key, a limit, a budget, a model the key
may not use, a body too large...) are counted apart, by status, error code and the refused key's display
prefix. Their labels stay bounded: the code comes from a fixed set (any other is "other"), and the key
label is a known key's prefix (keys are issued by admin) or "" when no valid key was sent.
"""

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from pathlib import Path

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aigateway.metrics_dir import pid_alive

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
# Seconds: a relay's added latency is milliseconds, a long answer minutes.
TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOKEN_KINDS = ("prompt", "completion", "cached")

REQUESTS = Counter(
    "gateway_requests",
    "Relay calls by the model that served them (or was asked for), provider, endpoint and HTTP status.",
    ["model", "provider", "endpoint", "status"],
)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "From the request reaching the gateway to its last byte.",
    ["model", "provider"],
    buckets=TIME_BUCKETS,
)
TTFB = Histogram(
    "gateway_time_to_first_byte_seconds",
    "From the request reaching the gateway to the first byte of the answer sent to the client.",
    ["model", "provider"],
    buckets=TIME_BUCKETS,
)
TOKENS = Counter(
    "gateway_tokens", "Tokens billed, by model and kind (cached = prompt tokens read from cache).", ["model", "kind"]
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors",
    "Provider failures: before the first byte (each deployment tried) and mid-stream.",
    ["provider", "kind"],
)
HTTP_RESPONSES = Counter(
    "gateway_http_responses",
    "Every API answer by view and HTTP status, refusals before a relay call (401, 404, 429...) included.",
    ["view", "status"],
)
REFUSALS = Counter(
    "gateway_refusals",
    "Requests refused by the gateway (HTTP 4xx) on the API doors, by status, error code and the refused key's "
    "display prefix (empty when no valid key was sent).",
    ["status", "code", "key"],
)
# The error codes a refusal is counted under; any other code is counted as "other", so a new code cannot grow
# the label set unseen.
REFUSAL_CODES = frozenset(
    {
        "missing_api_key",
        "invalid_api_key",
        "unauthenticated",
        "session_ended",
        "key_revoked",
        "no_usable_key",
        "method_not_allowed",
        "unsupported_media_type",
        "unsupported_content_encoding",
        "request_too_large",
        "invalid_request",
        "json_too_deep",
        "too_many_models",
        "context_length_exceeded",
        "unsupported_endpoint",
        "not_found",
        "model_not_found",
        "model_not_allowed",
        "rate_limit_exceeded",
        "budget_exceeded",
        "run_in_progress",
        "no_run",
    }
)
LOG_REDACTIONS = Counter(
    "gateway_request_log_redactions",
    "Secrets, e-mail addresses, card-like numbers and operator patterns replaced in request log records, by kind "
    "of record (metadata, full).",
    ["level"],
)
CACHE_REQUESTS = Counter(
    "gateway_cache_requests",
    "Chat calls by what the response cache did: hit (answered from it), miss (looked up, not found), bypass "
    "(the cache is off for the key, or the client said no-cache / no-store).",
    ["result"],
)
# Labelled (as every counter here): an unlabelled one would make a file in each process that imports this module.
CACHE_STORED_BYTES = Counter(
    "gateway_cache_stored_bytes",
    "Bytes of answers written to the response cache (compressed, as stored), by model.",
    ["model"],
)
RESUMABLE_OPEN = Gauge(
    "gateway_resumable_streams_open",
    "Resumable streams running now (with or without a client reading them).",
    multiprocess_mode="livesum",
)
RESUMABLE_EVENTS = Counter(
    "gateway_resumable_streams",
    "Resumable streams by what happened: opened, resumed (a client reconnected), expired (nobody came back "
    "within the grace, or the buffer was full with nobody reading), cancelled.",
    ["event"],
)
STREAMS_IN_FLIGHT = Gauge(
    "gateway_streams_in_flight", "Streamed answers being relayed now.", multiprocess_mode="livesum"
)


class _Tally:
    """This process's counts since the last write to the shared files. Plain dicts and ints: the hot path
    touches nothing else (no locks, no memory-mapped writes)."""

    def __init__(self) -> None:
        self.reset()
        self.streams = 0
        self.resumable_open = 0
        self.flush_handle: asyncio.TimerHandle | None = None

    def reset(self) -> None:
        self.requests: dict[tuple, int] = {}
        self.tokens: dict[tuple, int] = {}
        self.errors: dict[tuple, int] = {}
        self.responses: dict[tuple, int] = {}
        self.refusals: dict[tuple, int] = {}
        self.cache: dict[str, int] = {}
        self.cache_bytes: dict[str, int] = {}
        self.redactions: dict[str, int] = {}
        self.resumable: dict[str, int] = {}
        # (model, provider) -> the seconds observed since the last flush. A histogram takes one
        # observation at a time (prometheus-client has no public call that adds a bucket count), so each
        # value waits here for its `observe`: a float a call, for at most FLUSH_SECONDS.
        self.duration: dict[tuple, list[float]] = {}
        self.ttfb: dict[tuple, list[float]] = {}
        self.streams_changed = False


_tally = _Tally()


def _observe(table: dict, key: tuple, seconds: float) -> None:
    values = table.get(key)
    if values is None:
        table[key] = [seconds]
    else:
        values.append(seconds)


def _add(table: dict, key: tuple, amount: int) -> None:
    table[key] = table.get(key, 0) + amount


def metrics_record(event: dict, failures=()) -> None:
    """Count one finished relay call from its usage event; `failures`: (provider, kind) of each upstream
    error it met."""
    model, provider = event["model"], event["provider"]
    _add(_tally.requests, (model, provider, event["endpoint"], event["status_code"]), 1)
    for kind in TOKEN_KINDS:
        amount = event[kind + "_tokens"]
        if amount:
            _add(_tally.tokens, (model, kind), amount)
    for failure in failures:
        _add(_tally.errors, failure, 1)
    key = (model, provider)
    duration = event.get("duration_ms")
    if duration is not None:
        _observe(_tally.duration, key, duration / 1000.0)
    ttfb = event.get("ttfb_ms")
    if ttfb is not None:
        _observe(_tally.ttfb, key, ttfb / 1000.0)
    _flush_soon()


def metrics_response(view: str, status: int) -> None:
    """Count one API answer (every one, relay call or refusal)."""
    _add(_tally.responses, (view, status), 1)
    _flush_soon()


def metrics_refusal(status: int, code: str, key_prefix: str = "") -> None:
    """Count one refused request: its HTTP status, its error code (see REFUSAL_CODES) and the key's display
    prefix ("" when the request carried no valid key)."""
    _add(_tally.refusals, (status, code if code in REFUSAL_CODES else "other", key_prefix), 1)
    _flush_soon()


def metrics_cache(result: str) -> None:
    """Count one chat call's response cache result: "hit", "miss" or "bypass"."""
    _tally.cache[result] = _tally.cache.get(result, 0) + 1
    _flush_soon()


def metrics_cache_stored(model: str, size: int) -> None:
    _add(_tally.cache_bytes, model, size)
    _flush_soon()


def metrics_log_redactions(level: str, count: int) -> None:
    if count:
        _add(_tally.redactions, level, count)
        _flush_soon()


def metrics_resumable(event: str) -> None:
    """A resumable stream's life: "opened" and "closed" move the open gauge; "opened", "resumed", "expired" and
    "cancelled" are counted."""
    if event == "closed":
        _tally.resumable_open -= 1
        _tally.streams_changed = True
    else:
        if event == "opened":
            _tally.resumable_open += 1
            _tally.streams_changed = True
        _tally.resumable[event] = _tally.resumable.get(event, 0) + 1
    _flush_soon()


def metrics_stream_opened() -> None:
    _tally.streams += 1
    _tally.streams_changed = True
    _flush_soon()


def metrics_stream_closed() -> None:
    _tally.streams -= 1
    _tally.streams_changed = True
    _flush_soon()


def _flush_soon() -> None:
    handle = _tally.flush_handle
    if handle is not None and not handle.cancelled():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        metrics_flush()
        return
    _tally.flush_handle = loop.call_later(FLUSH_SECONDS, _timer_flush)


def _timer_flush() -> None:
    _tally.flush_handle = None
    try:
        metrics_flush()
    except Exception as exc:  # a full disk must not break the event loop's timer
        logger.warning("writing metrics failed: %s", type(exc).__name__)


def _histogram_add(histogram: Histogram, table: dict) -> None:
    for key, values in table.items():
        observe = histogram.labels(*key).observe
        for seconds in values:
            observe(seconds)


def metrics_flush() -> None:
    """Write this process's tallies to the shared multi-process files (and start a new tally)."""
    tally = _tally
    requests, tokens, errors, responses = tally.requests, tally.tokens, tally.errors, tally.responses
    refusals, cache, cache_bytes, redactions = tally.refusals, tally.cache, tally.cache_bytes, tally.redactions
    resumable = tally.resumable
    duration, ttfb, streams_changed = tally.duration, tally.ttfb, tally.streams_changed
    handle = tally.flush_handle
    if handle is not None:
        handle.cancel()
        tally.flush_handle = None
    tally.reset()
    for (model, provider, endpoint, status), count in requests.items():
        REQUESTS.labels(model, provider, endpoint, str(status)).inc(count)
    for (model, kind), count in tokens.items():
        TOKENS.labels(model, kind).inc(count)
    for (provider, kind), count in errors.items():
        UPSTREAM_ERRORS.labels(provider, kind).inc(count)
    for (view, status), count in responses.items():
        HTTP_RESPONSES.labels(view, str(status)).inc(count)
    for (status, code, key), count in refusals.items():
        REFUSALS.labels(str(status), code, key).inc(count)
    for result, count in cache.items():
        CACHE_REQUESTS.labels(result).inc(count)
    for model, size in cache_bytes.items():
        CACHE_STORED_BYTES.labels(model).inc(size)
    for level, count in redactions.items():
        LOG_REDACTIONS.labels(level).inc(count)
    for event, count in resumable.items():
        RESUMABLE_EVENTS.labels(event).inc(count)
    _histogram_add(DURATION, duration)
    _histogram_add(TTFB, ttfb)
    if streams_changed:
        STREAMS_IN_FLIGHT.set(tally.streams)
        RESUMABLE_OPEN.set(tally.resumable_open)


def metrics_process_exit() -> None:
    """A worker stopping: write what it counted, and drop its share of the live gauges."""
    metrics_flush()
    multiprocess.mark_process_dead(os.getpid())


def _dead_workers_forget(path: Path) -> None:
    """A worker that died without stopping (SIGKILL) leaves its live gauge behind: not in the sum."""
    for file in path.glob("gauge_livesum_*.db"):
        pid = file.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(path))


class SharedStateCollector:
    """Gauges read from Redis at scrape time: the same value whichever worker is scraped."""

    def __init__(self, snapshot: dict) -> None:
        self.snapshot = snapshot

    def collect(self):
        queue = GaugeMetricFamily("gateway_usage_queue_depth", "Usage events waiting to be written to the database.")
        queue.add_metric([], self.snapshot["queue_depth"])
        yield queue
        dead = GaugeMetricFamily(
            "gateway_usage_dead_letters", "Usage events the database refused, kept aside for inspection."
        )
        dead.add_metric([], self.snapshot["dead_letters"])
        yield dead
        # The request log rides the usage queue (its depth above); what the flushes wrote, counted in Redis.
        records = CounterMetricFamily(
            "gateway_request_log_records", "Request log records written to the database (every flusher)."
        )
        records.add_metric([], self.snapshot.get("log_records", 0))
        yield records
        stored = CounterMetricFamily(
            "gateway_request_log_stored_bytes", "Bytes of request log records written (compressed, as stored)."
        )
        stored.add_metric([], self.snapshot.get("log_bytes", 0))
        yield stored
        up = GaugeMetricFamily(
            "gateway_provider_up", "1 unless the health check marked the provider down.", labels=["provider"]
        )
        for provider, value in self.snapshot["providers"].items():
            up.add_metric([provider], value)
        yield up
        breaker = GaugeMetricFamily(
            "gateway_breaker_open",
            "1 while the circuit breaker of a deployment (provider + upstream model) is open.",
            labels=["provider", "model"],
        )
        for (provider, model), value in self.snapshot["breakers"].items():
            breaker.add_metric([provider, model], value)
        yield breaker


async def _shared_state() -> dict:
    from accounts.usage import usage_queue_depths
    from providers.routing import router

    queue_depth, dead_letters, log_records, log_bytes = await usage_queue_depths()
    providers, breakers = await router.availability_snapshot()
    return {
        "queue_depth": queue_depth,
        "dead_letters": dead_letters,
        "log_records": log_records,
        "log_bytes": log_bytes,
        "providers": providers,
        "breakers": breakers,
    }


def _loopback(request) -> bool:
    """Whether the client is on this host. Its address is the connection's, or, behind a proxy uvicorn
    trusts (FORWARDED_ALLOW_IPS, loopback by default), the X-Forwarded-For the proxy set: a proxy on this
    host does not make the internet's requests local."""
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # a unix socket (a proxy's) or no address at all
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _refusal(request) -> HttpResponse | None:
    """None when the client may read the metrics: with GATEWAY_METRICS_TOKEN set, only with that token;
    without one, any client under DEBUG, and otherwise clients on this host only (the page names every
    provider and upstream model)."""
    token = settings.GATEWAY_METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return _plain_error(401, "a valid metrics token is required: Authorization: Bearer <GATEWAY_METRICS_TOKEN>")
    if settings.DEBUG or _loopback(request):
        return None
    return _plain_error(
        403, "/metrics answers clients on this host only; set GATEWAY_METRICS_TOKEN to scrape it from elsewhere"
    )


def _plain_error(status: int, message: str, **headers) -> HttpResponse:
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8", headers=headers)


async def metrics_view(request):
    """GET /metrics: every worker's counts plus the shared gauges, in Prometheus' text format."""
    if request.method not in ("GET", "HEAD"):
        return _plain_error(405, "use GET for /metrics", Allow="GET, HEAD")
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    metrics_flush()
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    _dead_workers_forget(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(path))
    started = time.perf_counter()
    try:
        registry.register(SharedStateCollector(await _shared_state()))
    except Exception as exc:
        # The counters still answer; the shared gauges are missing and the log says why.
        logger.warning("metrics: shared state unavailable: %s", type(exc).__name__)
    output = generate_latest(registry)
    logger.debug("metrics page built in %.1f ms", (time.perf_counter() - started) * 1000)
    return HttpResponse(output, content_type=CONTENT_TYPE_LATEST)
