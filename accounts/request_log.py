"""The request log's records: what a call's usage event carries when its key logs bodies, and the RequestLog row
the usage flush makes of it.

`metadata` keeps the request's parameters without message content (no messages, input, system prompt or
prompt; tools by name); `full` keeps the request and the answer as the client got it (a stream's answer
assembled, not its events). Every string is redacted first (providers.redaction.log_text_redact: credentials,
e-mail addresses, card-like numbers, the operator's patterns); a record whose JSON is over
GATEWAY_LOG_MAX_BYTES has its longest strings cut (each cut marked) until it fits, and is marked truncated. The
JSON is stored zlib-compressed; the conversation's text, redacted and capped, is kept beside it for search.
"""

import base64
import re
import zlib
from datetime import datetime

import orjson
from django.conf import settings

from providers.redaction import log_text_redact

# Fields of a request body that hold message content: left out of a `metadata` record.
CONTENT_FIELDS = ("messages", "input", "system", "instructions", "prompt", "messages_by_model")
# The searchable text kept beside each record.
SEARCH_TEXT_MAX = 16 * 1024
TRUNCATION_MARK = "…[cut {} characters]"

_patterns_source: tuple = ()
_patterns: tuple[re.Pattern, ...] = ()


def _operator_patterns() -> tuple[re.Pattern, ...]:
    """GATEWAY_LOG_REDACT_PATTERNS compiled once (again if the setting changes, as tests do)."""
    global _patterns_source, _patterns
    source = tuple(settings.GATEWAY_LOG_REDACT_PATTERNS)
    if source != _patterns_source:
        _patterns_source, _patterns = source, tuple(re.compile(pattern) for pattern in source)
    return _patterns


class _Redactor:
    def __init__(self, secrets=()) -> None:
        self.patterns = _operator_patterns()
        self.secrets = secrets
        self.count = 0

    def value(self, value):
        """`value` (decoded JSON) with every string redacted (object keys included)."""
        if isinstance(value, str):
            text, found = log_text_redact(value, patterns=self.patterns, secrets=self.secrets)
            self.count += found
            return text
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.value(key): self.value(item) for key, item in value.items()}
        return value


def request_metadata(body: dict) -> dict:
    """A request body without its message content: the parameters, tools by name, how many messages."""
    kept = {name: value for name, value in body.items() if name not in CONTENT_FIELDS and name != "tools"}
    for name in ("messages", "input"):
        value = body.get(name)
        if isinstance(value, list):
            kept[f"{name}_count"] = len(value)
    tools = body.get("tools")
    if isinstance(tools, list):
        kept["tools"] = [_tool_name(tool) for tool in tools]
    return kept


def _tool_name(tool) -> str:
    if not isinstance(tool, dict):
        return "?"
    function = tool.get("function")
    name = function.get("name") if isinstance(function, dict) else tool.get("name")
    return name if isinstance(name, str) else str(tool.get("type", "?"))


def _text_of(value, out: list[str], budget: list[int]) -> None:
    """The strings inside `value`, in order, until `budget` characters are gathered."""
    if budget[0] <= 0:
        return
    if isinstance(value, str):
        out.append(value[: budget[0]])
        budget[0] -= len(value)
    elif isinstance(value, list):
        for item in value:
            _text_of(item, out, budget)
    elif isinstance(value, dict):
        for name, item in value.items():
            if name not in ("type", "role", "id", "model", "object", "signature"):
                _text_of(item, out, budget)


def _cut_to_fit(record: dict, limit: int) -> tuple[dict, bool]:
    """The record with its longest strings cut (each cut marked) until its JSON fits in `limit` bytes; whether
    anything was cut."""
    size = len(orjson.dumps(record))
    if size <= limit:
        return record, False
    keep = max(64, limit // 4)
    for _ in range(24):
        record = _strings_cut(record, keep)
        if len(orjson.dumps(record)) <= limit:
            return record, True
        keep //= 2
    # Not even that fits (a huge number of short strings): what is left says how large it was.
    return {"truncated": True, "original_bytes": size}, True


def _strings_cut(value, keep: int):
    if isinstance(value, str):
        return _cut(value, keep)
    if isinstance(value, list):
        return [_strings_cut(item, keep) for item in value]
    if isinstance(value, dict):
        return {name: _strings_cut(item, keep) for name, item in value.items()}
    return value


def _cut(text: str, keep: int) -> str:
    """`text` cut to about `keep` characters, never inside a word: the part of a secret or an address left at
    the cut would be too short for redaction to recognise (records are cut before they are redacted)."""
    if len(text) <= keep:
        return text
    head = text[:keep]
    if not text[keep].isspace():
        # Drop the word the cut went through (all of it, if the head is one word).
        end = len(head)
        while end and not head[end - 1].isspace():
            end -= 1
        head = head[:end]
    # A card number is several words: the groups of digits left before the cut go too.
    head = head[: _digit_groups_start(head)]
    return head + TRUNCATION_MARK.format(len(text) - len(head))


def _digit_groups_start(head: str) -> int:
    """Where the run of digit groups (separated by single spaces or dashes) that ends `head` starts, or
    len(head) when it ends with none. Linear: no regular expression backtracking over a long run of digits."""
    end = len(head)
    if end and head[end - 1] in " -":
        end -= 1
    start = end
    while start and head[start - 1].isdigit():
        start -= 1
    if start == end:
        return len(head)
    while start > 1 and head[start - 1] in " -" and head[start - 2].isdigit():
        start -= 1
        while start and head[start - 1].isdigit():
            start -= 1
    return start


def request_log_entry(*, level: str, request: dict, answer: dict | None, secrets=()) -> dict:
    """The `log` member of a usage event: the redacted record, compressed (base64, as events are JSON), its
    searchable text, and how it was stored. A record over the cap is cut first (so no time goes into redacting
    what is not kept), at word boundaries, then redacted, and cut again should redaction have lengthened it."""
    limit = settings.GATEWAY_LOG_MAX_BYTES
    if level == "metadata":
        record = {"request": request_metadata(request)}
    else:
        record = {"request": request, "response": answer}
    original = len(orjson.dumps(record))
    # A little room for what redaction adds ("[redacted email]" is longer than a short address).
    record, truncated = _cut_to_fit(record, limit - limit // 16)
    redactor = _Redactor(secrets)
    record = redactor.value(record)
    record, cut_again = _cut_to_fit(record, limit)
    data = orjson.dumps(record)
    texts: list[str] = []
    if level == "full":
        _text_of(record, texts, [SEARCH_TEXT_MAX])
    compressed = zlib.compress(data, 6)
    return {
        "level": level,
        "body": base64.b64encode(compressed).decode(),
        "search": "\n".join(texts)[:SEARCH_TEXT_MAX],
        "redactions": redactor.count,
        "truncated": truncated or cut_again,
        "stored_bytes": len(compressed),
        "original_bytes": original,
    }


def request_log_record_fields(log, *, request_id: str, created_at: datetime, fields: dict) -> dict | None:
    """RequestLog field values from a usage event's `log` member and its record's fields, or None when the
    member is not a log the gateway wrote (the usage record is written all the same)."""
    if not isinstance(log, dict) or log.get("level") not in ("metadata", "full"):
        return None
    try:
        body = base64.b64decode(log["body"], validate=True)
        search = log.get("search", "")
        numbers = [log.get(name, 0) for name in ("redactions", "stored_bytes", "original_bytes")]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(search, str) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return None
    return {
        "request_id": request_id,
        "created_at": created_at,
        "api_key_id": fields["api_key_id"],
        "user_id": fields["user_id"],
        "team_id": fields["team_id"],
        "model": fields["model"],
        "endpoint": fields["endpoint"],
        "status_code": fields["status_code"],
        "level": log["level"],
        "body": body,
        "stored_bytes": max(0, numbers[1]),
        "original_bytes": max(0, numbers[2]),
        "truncated": log.get("truncated") is True,
        "redactions": max(0, numbers[0]),
        "search_text": search[:SEARCH_TEXT_MAX],
    }


def request_log_body(stored: bytes) -> dict:
    """A stored record's JSON ({"request": ..., "response": ...}), for the viewer."""
    try:
        value = orjson.loads(zlib.decompress(bytes(stored)))
    except (zlib.error, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
