"""Upstream faults end to end: client -> gateway process (uvicorn) -> simulator, over loopback, with real Redis.

For every fault, in both client dialects, streamed and not where the fault applies, each test checks
what the client sees (a clean error in its dialect's shape before the first byte, or an error event
and a clean end after it), that the usage event is exact, and that the next request is served.
Each test prints one `FAULT_MATRIX` line with its measurements (docs/reliability.md collects them).
"""

import socket
import time
from dataclasses import dataclass, field

import httpx
import orjson
import psutil
import pytest

from streaming.tokens import count_tokens
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import gateway_start
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me something about streams"}]
BODY_CAP = 4_000_000
LINE_CAP = 1_000_000
READ_TIMEOUT = 1.0
UPSTREAM = {"openai": "sim-echo", "anthropic": "sim-claude"}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
BOTH = pytest.mark.parametrize("dialect", ["openai", "anthropic"])
STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory, django_db_setup):
    handle = gateway_start(
        redis_server,
        tmp_path_factory.mktemp("faults"),
        GATEWAY_MAX_UPSTREAM_BODY_BYTES=str(BODY_CAP),
        GATEWAY_MAX_SSE_LINE_BYTES=str(LINE_CAP),
        # Faults repeat on purpose here; the breaker has tests of its own.
        GATEWAY_BREAKER_FAILURES="1000",
    )
    yield handle
    handle.stop()


@dataclass
class Setup:
    key: str
    # One deployment per model, each on the provider of one dialect.
    models: dict = field(default_factory=dict)


@pytest.fixture
def setup(fresh_simulator):
    providers = {
        "openai": provider_create("sim-openai", fresh_simulator.openai_base, timeout_read=READ_TIMEOUT),
        "anthropic": provider_create(
            "sim-anthropic", fresh_simulator.url, dialect="anthropic", timeout_read=READ_TIMEOUT
        ),
    }

    def model(dialect: str, options: str) -> str:
        name = f"{dialect}-{options}"
        model_create(name, [(providers[dialect], f"{UPSTREAM[dialect]}?{options}", 0)])
        return name

    return Setup(key=key_create("faults"), models={"make": model})


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    seconds: float

    def json(self):
        return orjson.loads(self.body)

    def events(self) -> list[tuple[str | None, str]]:
        """(event name, data) per SSE event."""
        out = []
        for block in self.body.decode().split("\n\n"):
            name, data = None, []
            for line in block.split("\n"):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data:
                out.append((name, "\n".join(data)))
        return out

    def text(self, dialect: str) -> str:
        """The answer text of a successful response, streamed or not."""
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            data = self.json()
            if dialect == "openai":
                return data["choices"][0]["message"]["content"]
            return "".join(block["text"] for block in data["content"])
        parts = []
        for _, data in self.events():
            if data == "[DONE]":
                continue
            payload = orjson.loads(data)
            if dialect == "openai":
                parts += [c["delta"].get("content") or "" for c in payload.get("choices", [])]
            elif payload.get("type") == "content_block_delta":
                parts.append(payload["delta"].get("text", ""))
        return "".join(parts)


def body_for(dialect: str, model: str, stream: bool) -> dict:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    if dialect == "anthropic":
        body["max_tokens"] = 100_000
    return body


def headers_for(dialect: str, key: str) -> dict:
    if dialect == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {key}"}


def ask(gateway, setup: Setup, dialect: str, model: str, *, stream: bool, base_url: str | None = None) -> Answer:
    url = (base_url or gateway.url) + PATHS[dialect]
    body = body_for(dialect, model, stream)
    started = time.monotonic()
    with httpx.stream("POST", url, json=body, headers=headers_for(dialect, setup.key), timeout=60) as response:
        raw = response.read()
    return Answer(response.status_code, response.headers, raw, time.monotonic() - started)


def assert_error_shape(answer: Answer, dialect: str, status: int, *message_parts: str) -> str:
    """A clean error before the first byte: status, JSON in the client's dialect; returns the message."""
    assert answer.status == status, answer.body[:500]
    assert answer.headers["content-type"].startswith("application/json")
    data = answer.json()
    if dialect == "openai":
        error = data["error"]
        assert set(error) >= {"message", "type", "code"}
    else:
        assert data["type"] == "error"
        error = data["error"]
        assert set(error) == {"type", "message"}
    for part in message_parts:
        assert part in error["message"], error
    assert "Traceback" not in answer.body.decode()
    return error["message"]


def assert_error_event_then_end(answer: Answer, dialect: str, *message_parts: str) -> int:
    """An error event after some output, then a clean end; returns the text tokens before it."""
    assert answer.status == 200
    events = answer.events()
    if dialect == "openai":
        assert events[-1][1] == "[DONE]"
        error = orjson.loads(events[-2][1])["error"]
        assert error["code"] == "upstream_stream_error"
        before = [orjson.loads(data) for _, data in events[:-2]]
        tokens = sum(1 for p in before for c in p.get("choices", []) if c["delta"].get("content"))
    else:
        name, data = events[-1]
        assert name == "error"
        error = orjson.loads(data)["error"]
        assert error["type"] == "api_error"
        tokens = sum(1 for n, _ in events if n == "content_block_delta")
        assert not any(n == "message_stop" for n, _ in events)
    for part in message_parts:
        assert part in error["message"], error
    return tokens


def usage_of(model: str, timeout: float = 5.0) -> dict:
    events = wait_usage(lambda evs: any(e["model"] == model for e in evs), timeout=timeout)
    matching = [e for e in events if e["model"] == model]
    assert len(matching) == 1, matching
    return matching[0]


def recovery(gateway, setup: Setup, dialect: str, stream: bool) -> float:
    """Seconds from the end of the fault to a complete, correct answer from the same provider."""
    healthy = setup.models["make"](dialect, "tokens=5")
    started = time.monotonic()
    answer = ask(gateway, setup, dialect, healthy, stream=stream)
    assert answer.status == 200, answer.body[:300]
    assert len(answer.text(dialect).split()) == 5
    event = usage_of(healthy)
    assert event["status_code"] == 200 and event["completion_tokens"] == 5 and not event["tokens_estimated"]
    return time.monotonic() - started


def report(fault: str, dialect: str, stream: bool, saw: str, usage: str, seconds: float, recovered: float) -> None:
    kind = "stream" if stream else "json"
    print(
        f"\nFAULT_MATRIX | {fault} | {dialect} {kind} | {saw} | {usage} | "
        f"client done after {seconds * 1000:.0f} ms | recovered in {recovered * 1000:.0f} ms"
    )


def assert_failed_before_first_byte(event: dict, status: int) -> None:
    """Nothing was generated for the client: no completion tokens; any prompt tokens are the gateway's count."""
    assert event["status_code"] == status
    assert event["error_type"] == "upstream_unavailable"
    assert event["completion_tokens"] == 0
    assert event["prompt_tokens"] == 0 or event["tokens_estimated"] is True


def peak_rss(gateway) -> int:
    """The gateway process's resident memory high-water mark (Linux), in bytes."""
    with open(f"/proc/{gateway.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def assert_counts_what_the_client_got(event: dict, answer: Answer, dialect: str) -> None:
    """Cut short, the provider never reported usage: the call is billed for the text the client got,
    counted by the gateway (and marked as its count)."""
    assert event["tokens_estimated"] is True
    text = answer.text(dialect)
    assert text and event["completion_tokens"] == count_tokens(text)
    assert event["prompt_tokens"] > 0


# Before the first byte ---------------------------------------------------------------------------


@BOTH
@STREAMED
def test_upstream_500(gateway, setup, dialect, stream):
    model = setup.models["make"](dialect, "fail=500")
    answer = ask(gateway, setup, dialect, model, stream=stream)
    message = assert_error_shape(answer, dialect, 502, "upstream returned HTTP 500")
    event = usage_of(model)
    assert_failed_before_first_byte(event, 502)
    report(
        "upstream 500",
        dialect,
        stream,
        f"502 `{message}`",
        "yes",
        answer.seconds,
        recovery(gateway, setup, dialect, stream),
    )


@BOTH
@STREAMED
def test_every_deployment_rate_limited_is_429_with_retry_after(gateway, setup, fresh_simulator, dialect, stream):
    model = setup.models["make"](dialect, "fail=429")
    answer = ask(gateway, setup, dialect, model, stream=stream)
    assert fresh_simulator.requests()[-1]["status"] == 429
    message = assert_error_shape(answer, dialect, 429, "rate-limited upstream")
    assert answer.headers.get("retry-after") == "1"  # the simulator's Retry-After, passed on
    event = usage_of(model)
    assert event["status_code"] == 429 and event["error_type"] == "upstream_rate_limited"
    assert event["completion_tokens"] == 0
    report(
        "429 + Retry-After",
        dialect,
        stream,
        f"429 `{message}`",
        "yes",
        answer.seconds,
        recovery(gateway, setup, dialect, stream),
    )


@BOTH
@STREAMED
def test_hang_before_headers_is_a_clean_504(gateway, setup, fresh_simulator, dialect, stream):
    model = setup.models["make"](dialect, "hang=1")
    answer = ask(gateway, setup, dialect, model, stream=stream)
    message = assert_error_shape(answer, dialect, 504, "upstream timed out (ReadTimeout)")
    assert READ_TIMEOUT <= answer.seconds < READ_TIMEOUT + 1.5
    event = usage_of(model)
    assert_failed_before_first_byte(event, 504)
    # The gateway hung up on the provider.
    fresh_simulator.wait_for_requests(
        lambda rs: rs and rs[-1]["disconnected"], timeout=2, model=UPSTREAM[dialect] + "?hang=1"
    )
    report(
        "hang before headers",
        dialect,
        stream,
        f"504 `{message}`",
        "yes",
        answer.seconds,
        recovery(gateway, setup, dialect, stream),
    )


@BOTH
def test_invalid_json_body_is_a_clean_502(gateway, setup, dialect):
    model = setup.models["make"](dialect, "invalid_json=1")
    answer = ask(gateway, setup, dialect, model, stream=False)
    message = assert_error_shape(answer, dialect, 502, "not JSON")
    event = usage_of(model)
    assert_failed_before_first_byte(event, 502)
    report(
        "invalid JSON body",
        dialect,
        False,
        f"502 `{message}`",
        "yes",
        answer.seconds,
        recovery(gateway, setup, dialect, False),
    )


@BOTH
def test_body_above_the_cap_is_a_clean_502_naming_the_size(gateway, setup, fresh_simulator, dialect):
    model = setup.models["make"](dialect, "tokens=1000&token_bytes=10000")  # about 10 MB
    answer = ask(gateway, setup, dialect, model, stream=False)
    message = assert_error_shape(answer, dialect, 502, f"larger than the {BODY_CAP}-byte limit")
    event = usage_of(model)
    assert_failed_before_first_byte(event, 502)
    report(
        "10 MB JSON body, cap 4 MB",
        dialect,
        False,
        f"502 `{message}`",
        "yes",
        answer.seconds,
        recovery(gateway, setup, dialect, False),
    )


@BOTH
def test_body_below_the_cap_is_delivered_intact(gateway, setup, fresh_simulator, dialect):
    options = "tokens=300&token_bytes=10000"  # about 3 MB
    model = setup.models["make"](dialect, options)
    answer = ask(gateway, setup, dialect, model, stream=False)
    assert answer.status == 200
    direct_model = f"{UPSTREAM[dialect]}?{options}"
    base = fresh_simulator.openai_base.removesuffix("/v1") if dialect == "openai" else fresh_simulator.url
    direct = ask(gateway, setup, dialect, direct_model, stream=False, base_url=base)
    assert len(answer.body) > 3_000_000
    assert answer.text(dialect) == direct.text(dialect)
    event = usage_of(model)
    assert event["status_code"] == 200 and event["completion_tokens"] == 300 and not event["tokens_estimated"]
    report("3 MB JSON body, cap 4 MB", dialect, False, "200, body intact", "yes (reported)", answer.seconds, 0.0)


# After the first byte ----------------------------------------------------------------------------


@BOTH
def test_hang_mid_stream_is_an_error_event_then_a_clean_end(gateway, setup, fresh_simulator, dialect):
    model = setup.models["make"](dialect, "hang_after=3&tokens=10")
    answer = ask(gateway, setup, dialect, model, stream=True)
    tokens = assert_error_event_then_end(answer, dialect, f"sent nothing for {READ_TIMEOUT:g}s mid-stream")
    assert tokens == 3
    assert READ_TIMEOUT <= answer.seconds < READ_TIMEOUT + 1.5
    event = usage_of(model)
    assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"
    assert_counts_what_the_client_got(event, answer, dialect)
    saw = "3 tokens, error event `the provider sent nothing for 1s mid-stream`, clean end"
    report(
        "hang mid-stream", dialect, True, saw, "yes (3 tokens)", answer.seconds, recovery(gateway, setup, dialect, True)
    )


@BOTH
@STREAMED
def test_drop_mid_stream(gateway, setup, dialect, stream):
    model = setup.models["make"](dialect, "drop_after=3&tokens=10")
    answer = ask(gateway, setup, dialect, model, stream=stream)
    event = usage_of(model)
    if stream:
        tokens = assert_error_event_then_end(answer, dialect, "mid-stream")
        assert tokens == 3
        assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"
        assert_counts_what_the_client_got(event, answer, dialect)
        saw, usage = (
            "3 tokens, error event `the provider closed the connection mid-stream`, clean end",
            "yes (3 tokens)",
        )
    else:
        # Not streamed, the connection drops before the body: a failure before the first byte.
        message = assert_error_shape(answer, dialect, 502, "upstream connection failed")
        assert_failed_before_first_byte(event, 502)
        saw, usage = f"502 `{message}`", "yes"
    report("drop mid-stream", dialect, stream, saw, usage, answer.seconds, recovery(gateway, setup, dialect, stream))


@BOTH
def test_malformed_event_is_skipped_and_the_stream_completes(gateway, setup, fresh_simulator, dialect):
    model = setup.models["make"](dialect, "malformed_after=3&tokens=10")
    answer = ask(gateway, setup, dialect, model, stream=True)
    assert answer.status == 200
    assert b"{not json" not in answer.body
    direct = ask(gateway, setup, dialect, f"{UPSTREAM[dialect]}?tokens=10", stream=True,
                 base_url=fresh_simulator.url)  # fmt: skip
    assert answer.text(dialect) == direct.text(dialect) and len(answer.text(dialect).split()) == 10
    event = usage_of(model)
    assert event["status_code"] == 200 and event["completion_tokens"] == 10 and not event["tokens_estimated"]
    report("malformed SSE event", dialect, True, "200, bad event dropped, rest intact", "yes (reported)",
           answer.seconds, recovery(gateway, setup, dialect, True))  # fmt: skip


@BOTH
def test_sse_line_above_the_cap_ends_with_an_error_event(gateway, setup, fresh_simulator, dialect):
    model = setup.models["make"](dialect, "long_line=50000000&tokens=10")  # a 50 MB line
    rss_before = psutil.Process(gateway.process.pid).memory_info().rss
    answer = ask(gateway, setup, dialect, model, stream=True)
    peak = peak_rss(gateway)
    # The client is told why, in its terms: the provider's line was over the gateway's limit.
    tokens = assert_error_event_then_end(answer, dialect, f"larger than {LINE_CAP} bytes", "incomplete")
    assert f"SSEEventTooLarge: upstream sent an SSE line or event larger than {LINE_CAP} bytes" in gateway.log()
    assert tokens == 1
    # Had the gateway held the 50 MB line, its peak would be at least 50 MB above where it started.
    assert peak - rss_before < 30_000_000, (rss_before, peak)
    event = usage_of(model)
    assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"
    assert_counts_what_the_client_got(event, answer, dialect)
    report(f"50 MB SSE line, cap {LINE_CAP // 1_000_000} MB", dialect, True, "1 token, error event, clean end",
           "yes (1 token)", answer.seconds, recovery(gateway, setup, dialect, True))  # fmt: skip


# A slow client -----------------------------------------------------------------------------------


def test_slow_client_holds_back_the_upstream_instead_of_filling_memory(gateway, setup, fresh_simulator):
    """A client reading 1 KB/s from a stream the upstream could send at hundreds of MB/s: the
    gateway reads the upstream only as fast as the client takes it, so its memory stays flat."""
    options = "tokens=200000&token_bytes=1000"  # 200 MB if sent in full
    model = setup.models["make"]("openai", options)
    process = psutil.Process(gateway.process.pid)
    host, port = gateway.url.removeprefix("http://").split(":")
    body = orjson.dumps(body_for("openai", model, True))
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {setup.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    received = 0
    try:
        sock.sendall(request)
        received += len(sock.recv(1024))
        rss_start = process.memory_info().rss
        for _ in range(10):
            time.sleep(1.0)
            received += len(sock.recv(1024))
        rss_peak = peak_rss(gateway)
        record = fresh_simulator.requests(model=f"sim-echo?{options}")[-1]
    finally:
        sock.close()
    produced = record["tokens_sent"] * 1000
    growth = rss_peak - rss_start
    print(
        f"\nFAULT_MATRIX_SLOW | client read {received} bytes in 10 s | upstream sent {produced / 1e6:.1f} MB "
        f"of 200 MB | gateway RSS growth {growth / 1e6:.1f} MB"
    )
    assert received <= 11 * 1024
    # Socket buffers on both sides hold a few MB at most; without backpressure this would be 200 MB.
    assert produced < 40_000_000, produced
    assert growth < 50 * 1024 * 1024, growth
    # The client went away: the upstream is closed and the call recorded as such.
    fresh_simulator.wait_for_requests(lambda rs: rs and rs[-1]["disconnected"], timeout=5, model=f"sim-echo?{options}")
    event = usage_of(model, timeout=10)
    assert event["status_code"] == 499 and event["tokens_estimated"] is True
    # Billed for what was relayed, which is at most what the provider sent.
    assert 0 < event["completion_tokens"] <= record["tokens_sent"] * (count_tokens(" lorem" + "x" * 994) + 2)
    recovered = recovery(gateway, setup, "openai", True)
    report("slow client (1 KB/s)", "openai", True, f"read {received} B; upstream held at {produced / 1e6:.1f} MB",
           "499, tokens relayed", 10.0, recovered)  # fmt: skip
