"""Log lines: one per relay call on the `aigateway.requests` logger, readable or JSON (GATEWAY_LOG_FORMAT).

A request line carries the request id, the key's display prefix (never the key), the model and provider,
status, timings, tokens and attempts. The prompt is in it only when GATEWAY_LOG_BODIES is set. With
GATEWAY_LOG_FORMAT=json every log line of the process is one JSON object, so a log shipper reads
request lines and warnings alike.
"""

import logging
import traceback
from datetime import UTC, datetime

import orjson

request_logger = logging.getLogger("aigateway.requests")

# The usage event's fields a request line carries, in this order.
_EVENT_FIELDS = (
    "request_id",
    "endpoint",
    "model",
    "requested_model",
    "route",
    "provider",
    "stream",
    "status_code",
    "error_type",
    "ttfb_ms",
    "ttfb_upstream_ms",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "tokens_estimated",
    "attempts",
    "run_id",
    "dropped_tools",
)


class RequestLine:
    """A request line's fields; rendered as text only if a text handler asks (`str`)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict) -> None:
        self.fields = fields

    def __str__(self) -> str:
        f = self.fields
        model = f["model"] + (f" (asked {f['requested_model']})" if f.get("requested_model") else "")
        provider = f"via {f['provider']}" if f.get("provider") else "no provider"
        ttfb = "-" if f.get("ttfb_ms") is None else f"{f['ttfb_ms']:.1f}ms"
        duration = "-" if f.get("duration_ms") is None else f"{f['duration_ms']:.1f}ms"
        tokens = f"{f['prompt_tokens']}+{f['completion_tokens']}" + ("~" if f.get("tokens_estimated") else "")
        text = (
            f"{f['request_id']} {f['status_code']}{' ' + f['error_type'] if f.get('error_type') else ''} "
            f"{f['endpoint']} {model} {provider} key={f['key_prefix']} ttfb={ttfb} duration={duration} "
            f"tokens={tokens} attempts={f['attempts']}"
        )
        if f.get("failover"):
            text += f" failover={f['route']}"
        if f.get("dropped_tools"):
            text += " dropped_tools=" + ",".join(f["dropped_tools"])
        if "request_body" in f:
            text += " body=" + orjson.dumps(f["request_body"]).decode()
        return text


def request_log(event: dict, *, key_prefix: str, body: dict | None = None) -> None:
    """Log one finished relay call from its usage event; `body` (the client's request) only when bodies
    are to be logged."""
    if not request_logger.isEnabledFor(logging.INFO):
        return
    fields = {name: event.get(name) for name in _EVENT_FIELDS}
    fields["key_prefix"] = key_prefix
    fields["failover"] = (event.get("attempts") or 0) > 1 or str(event.get("route", "")).startswith("fallback:")
    if body is not None:
        fields["request_body"] = body
    request_logger.info(RequestLine(fields))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request line's fields at the top."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if isinstance(record.msg, RequestLine):
            line["message"] = "request"
            line.update(record.msg.fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(line, default=str).decode()
