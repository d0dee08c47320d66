"""The SSE decoder's size limit: a line or event above it is a clear protocol error, and the decoder
never holds more than the limit plus one chunk, however the upstream splits its bytes."""

import time

import httpx
import pytest

from providers.dialects.sse import SSEDecoder, SSEEventTooLarge


def test_events_under_the_limit_decode_whatever_the_chunking():
    stream = b"event: a\ndata: " + b"y" * 900 + b"\n\ndata: two\r\ndata: lines\r\n\r\n: comment\n\ndata: end\r"
    whole = SSEDecoder(max_line_bytes=1000).feed(stream)
    decoder = SSEDecoder(max_line_bytes=1000)
    split = []
    for index in range(0, len(stream), 7):
        split += decoder.feed(stream[index : index + 7])
    assert [(e.event, e.data) for e in split] == [(e.event, e.data) for e in whole]
    assert [(e.event, e.data) for e in whole] == [("a", "y" * 900), (None, "two\nlines")]
    # The trailing "\r" may be half of "\r\n": the last event waits for more, or for the end of the stream.
    assert [e.data for e in decoder.flush()] == ["end"]


def test_a_line_without_an_end_fails_once_it_passes_the_limit():
    decoder = SSEDecoder(max_line_bytes=1000)
    decoder.feed(b"data: ok\n\n")
    fed = 0
    with pytest.raises(SSEEventTooLarge, match="larger than 1000 bytes") as raised:
        while fed < 10_000:
            decoder.feed(b"x" * 100)
            fed += 100
    # Stopped at the first chunk past the limit, not after reading everything.
    assert 1000 <= fed <= 1100
    # The relay treats it as a broken upstream stream: an httpx protocol error.
    assert isinstance(raised.value, httpx.RemoteProtocolError)
    assert raised.value.limit == 1000


def test_one_chunk_holding_a_whole_oversized_line_fails():
    with pytest.raises(SSEEventTooLarge):
        SSEDecoder(max_line_bytes=1000).feed(b"data: " + b"x" * 5000 + b"\n\n")


def test_an_event_of_many_short_lines_above_the_limit_fails():
    decoder = SSEDecoder(max_line_bytes=1000)
    with pytest.raises(SSEEventTooLarge):
        for _ in range(200):
            decoder.feed(b"data: " + b"z" * 20 + b"\n")


def test_the_limit_resets_with_each_event():
    decoder = SSEDecoder(max_line_bytes=1000)
    events = []
    for _ in range(50):
        events += decoder.feed(b"data: " + b"z" * 600 + b"\n\n")
    assert len(events) == 50


def test_the_default_limit_comes_from_settings(settings):
    settings.GATEWAY_MAX_SSE_LINE_BYTES = 64
    decoder = SSEDecoder()
    assert decoder.feed(b"data: short\n\n")[0].data == "short"
    with pytest.raises(SSEEventTooLarge, match="larger than 64 bytes"):
        decoder.feed(b"data: " + b"x" * 100)


def test_scanning_a_long_partial_line_is_linear():
    # A 4 MB line fed in 1 KB chunks: each feed looks only at the new bytes (quadratic rescans
    # would take minutes here).
    decoder = SSEDecoder(max_line_bytes=8 * 1024 * 1024)
    chunk = b"x" * 1024
    started = time.perf_counter()
    decoder.feed(b"data: ")
    for _ in range(4096):
        decoder.feed(chunk)
    events = decoder.feed(b"\n\n")
    assert len(events) == 1 and len(events[0].data) == 4 * 1024 * 1024
    assert time.perf_counter() - started < 20
