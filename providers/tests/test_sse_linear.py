"""The SSE decoder's cost grows with the bytes it is fed, not with their square, when one read holds many
lines (a fast upstream, a long answer already buffered); and however a stream is cut into reads, the
events are those the WHATWG rules give."""

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.dialects.sse import SSEDecoder

EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}\n\n'
)


def _decode_seconds(size: int) -> float:
    """Best of three: one read of `size` bytes of events."""
    data = EVENT * (size // len(EVENT))
    best = float("inf")
    for _ in range(3):
        decoder = SSEDecoder(max_line_bytes=len(data))
        started = time.perf_counter()
        events = decoder.feed(data)
        best = min(best, time.perf_counter() - started)
        assert len(events) == size // len(EVENT)
    return best


def test_one_read_of_many_lines_costs_time_linear_in_its_size():
    one = _decode_seconds(1024 * 1024)
    four = _decode_seconds(4 * 1024 * 1024)
    # Linear: about 4 times. Copying the rest of the buffer for every line made it 40 times and more.
    assert four < 10 * one, (one, four)


def _reference(stream: bytes) -> list[tuple[str | None, str]]:
    """The WHATWG event-stream rules written plainly (lines end at CRLF, CR or LF; a blank line
    dispatches; a final unterminated event is dispatched too, as the decoder's flush does)."""
    events, name, data = [], None, []
    for line in re.split(rb"\r\n|\r|\n", stream) + [b""]:
        text = line.decode("utf-8", errors="replace")
        if not text:
            if data or name is not None:
                events.append((name, "\n".join(data)))
            name, data = None, []
            continue
        if text.startswith(":"):
            continue
        field, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return events


_LINE = st.one_of(
    st.builds(lambda v: b"data: " + v, st.binary(max_size=20).map(lambda b: re.sub(rb"[\r\n]", b"x", b))),
    st.builds(lambda v: b"event: " + v, st.sampled_from([b"a", b"message_stop", b"ping"])),
    st.just(b": keepalive"),
    st.just(b"data:no-space"),
    st.just(b"id: 7"),
    st.just(b""),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(_LINE, st.sampled_from([b"\n", b"\r\n", b"\r"])), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_split_into_reads_gives_the_events_of_the_rules(lines, cuts):
    stream = b"".join(line + end for line, end in lines)
    decoder = SSEDecoder(max_line_bytes=10_000)
    events = []
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        events += decoder.feed(stream[start:end])
    events += decoder.flush()
    assert [(e.event, e.data) for e in events] == _reference(stream)
