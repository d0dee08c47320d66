"""Server-sent events: an incremental decoder following the WHATWG parsing rules, and the encoder.

The decoder is fed raw byte chunks as they arrive from the upstream and yields each complete
event at once, so nothing waits for more data than the event itself needs. It holds at most one
line and one event in memory: a longer one (GATEWAY_MAX_SSE_LINE_BYTES) is SSEEventTooLarge.
Its cost is linear in the bytes fed, however many lines one chunk holds: lines are read in place and
the consumed part of the buffer is dropped once per chunk.
"""

import re
from dataclasses import dataclass

import httpx
import orjson
from django.conf import settings

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEEventTooLarge(httpx.RemoteProtocolError):
    """The upstream sent an SSE line or event above the size limit.

    A broken upstream stream like any other (an httpx protocol error), so the relay ends the call the
    same way: failover before the first event, an error event after it."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upstream sent an SSE line or event larger than {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class SSEvent:
    event: str | None
    data: str

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"


class SSEDecoder:
    def __init__(self, max_line_bytes: int | None = None) -> None:
        # A bytearray: appending a chunk to a long partial line must not copy the whole line.
        self._buffer = bytearray()
        # Where to resume looking for a line end: the buffer before it holds none.
        self._scanned = 0
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0
        self._limit = max_line_bytes if max_line_bytes is not None else settings.GATEWAY_MAX_SSE_LINE_BYTES

    def feed(self, chunk: bytes) -> list[SSEvent]:
        """Consume a chunk; return the events it completed (possibly none).

        Raises SSEEventTooLarge once a line, or the data of one event, passes the limit."""
        buf = self._buffer
        buf += chunk
        events: list[SSEvent] = []
        # Start of the first line not yet consumed. Lines are copied out one by one and the consumed
        # prefix is deleted once at the end: cutting the buffer after every line would copy the rest of
        # the chunk each time (quadratic in the number of lines a read holds).
        start = 0
        scan = self._scanned
        try:
            while True:
                match = _LINE_END.search(buf, scan)
                if match is None:
                    scan = len(buf)
                    break
                end = match.end()
                if end == len(buf) and buf[end - 1] == 0x0D:
                    scan = match.start()  # could be the first half of \r\n: wait for more
                    break
                line = buf[start : match.start()]
                start = scan = end
                event = self._line(line)
                if event is not None:
                    events.append(event)
        finally:
            if start:
                del buf[:start]
                scan -= start
            self._scanned = scan
        if len(buf) > self._limit:
            raise SSEEventTooLarge(self._limit)
        return events

    def flush(self) -> list[SSEvent]:
        """End of stream: an unterminated final event is dispatched too (lenient, like most clients)."""
        events = []
        if self._buffer:
            # A final lone "\r" ended its line: at the end of the stream it cannot be half of "\r\n".
            event = self._line(self._buffer.removesuffix(b"\r"))
            self._buffer = bytearray()
            self._scanned = 0
            if event is not None:
                events.append(event)
        event = self._line(b"")
        if event is not None:
            events.append(event)
        return events

    def _line(self, raw: bytes | bytearray) -> SSEvent | None:
        if not raw:
            if not self._data and self._event is None:
                return None
            event = SSEvent(event=self._event, data="\n".join(self._data))
            self._event, self._data, self._data_size = None, [], 0
            return event
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_size += len(value) + 1
            if self._data_size > self._limit:
                raise SSEEventTooLarge(self._limit)
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


# A "model" member whose value is a JSON string (escapes included). Inside another string every quote is
# escaped, so this cannot match text that merely mentions "model".
_MODEL_MEMBER = re.compile(r'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def data_verbatim(data: str | None) -> bool:
    """Whether an upstream event's data can be sent on as it came: one line (a multi-line data field
    would need re-framing; the encoder's compact JSON never spans lines)."""
    return data is not None and "\n" not in data and "\r" not in data


def data_model_replaced(data: str, model_member: str) -> str | None:
    """`data` (one JSON object, as the upstream sent it) with its one string "model" member replaced by
    `model_member` (`"model":"<name>"`, JSON-encoded); None when such a member is not there exactly once,
    and the caller re-encodes the parsed event instead."""
    found = _MODEL_MEMBER.findall(data, 0)
    if len(found) != 1:
        return None
    return data.replace(found[0], model_member, 1)


def data_null_member_removed(data: str, name: str) -> str | None:
    """`data` without its member `name` whose value is null (OpenAI's `"usage":null` on every chunk of a
    stream that asked for usage); None unless `"name"` occurs exactly once in `data` (then it is that
    member: quotes inside strings are escaped)."""
    quoted = f'"{name}"'
    if data.count(quoted) != 1:
        return None
    found = re.search(rf",\s*{quoted}\s*:\s*null|{quoted}\s*:\s*null\s*,?", data)
    if found is None:
        return None
    return data[: found.start()] + data[found.end() :]


def model_member(model: str) -> str:
    return '"model":' + orjson.dumps(model).decode()


def sse_encode(data: bytes, event: str | None = None) -> bytes:
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"
