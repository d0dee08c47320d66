"""Server-sent events: an incremental decoder following the WHATWG parsing rules, and the encoder.

The decoder is fed raw byte chunks as they arrive from the upstream and yields each complete
event at once, so nothing waits for more data than the event itself needs.
"""

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class SSEvent:
    event: str | None
    data: str

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEvent]:
        """Consume a chunk; return the events it completed (possibly none)."""
        self._buffer += chunk
        events: list[SSEvent] = []
        while True:
            line, sep, rest = self._next_line()
            if not sep:
                break
            self._buffer = rest
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEvent]:
        """End of stream: an unterminated final event is dispatched too (lenient, like most clients)."""
        events = []
        if self._buffer:
            event = self._line(self._buffer)
            self._buffer = b""
            if event is not None:
                events.append(event)
        event = self._line(b"")
        if event is not None:
            events.append(event)
        return events

    def _next_line(self) -> tuple[bytes, bool, bytes]:
        buf = self._buffer
        match = _LINE_END.search(buf)
        if match is None:
            return b"", False, buf
        if match.group() == b"\r" and match.end() == len(buf):
            return b"", False, buf  # could be the first half of \r\n: wait for more
        return buf[: match.start()], True, buf[match.end() :]

    def _line(self, raw: bytes) -> SSEvent | None:
        if not raw:
            if not self._data and self._event is None:
                return None
            event = SSEvent(event=self._event, data="\n".join(self._data))
            self._event, self._data = None, []
            return event
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def sse_encode(data: bytes, event: str | None = None) -> bytes:
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"
