"""GATEWAY_MAX_UPSTREAM_BODY_BYTES against a hostile upstream, end to end through a gateway process: a
50 MB error body, a 200 MB close-delimited error body and a gzip bomb (1 MB that inflates to 1 GiB), for
chat and for count_tokens. The client gets a clean answer quickly, the gateway's memory does not follow
the upstream's body, the call is on the books and no concurrency lease is left behind."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.support.compression import gzip_bomb
from tests.support.data import key_create, model_create, provider_create
from tests.support.raw_upstream import RawUpstreamThread
from tests.support.usage import leases_held, wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1_000_000
# Peak memory the gateway may gain over one hostile answer: the cap (32 MiB by default) read once, plus
# the interpreter's slack; the bodies are 50 MB to 1 GiB.
MAX_GROWTH = 56 * 1024 * 1024


async def _write_until_gone(writer: asyncio.StreamWriter, total: int, upstream) -> None:
    """Write `total` bytes of body; the client closing the connection meanwhile is recorded as it leaving."""
    piece = b"x" * 65536
    sent = 0
    try:
        while sent < total:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
    except ConnectionError:
        upstream.left.append(time.monotonic())


async def hostile(reader, writer, upstream) -> None:
    """What each scenario (the first segment of the path) answers."""
    raw = await upstream.request(reader)
    if raw is None:
        return
    path = raw.split(b" ", 2)[1].decode()
    scenario = path.split("/")[1]
    if scenario == "big400":
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (50 * MB)
        )
        await _write_until_gone(writer, 50 * MB, upstream)
    elif scenario == "close400":
        # No length, no chunking: the body ends when the connection does.
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        await _write_until_gone(writer, 200 * MB, upstream)
    elif scenario in ("bomb", "bomb400"):
        bomb = gzip_bomb()
        status = b"200 OK" if scenario == "bomb" else b"400 Bad Request"
        writer.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
            % (status, len(bomb))
        )
        writer.write(bomb)
        await writer.drain()
    if not upstream.left:
        await upstream.until_client_leaves(reader)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb()


@pytest.mark.parametrize(
    ("scenario", "status"),
    [("big400", 502), ("close400", 502), ("bomb", 502), ("bomb400", 502)],
    ids=["50MB-error-body", "200MB-close-delimited-error-body", "gzip-bomb", "gzip-bomb-error-body"],
)
def test_a_hostile_body_is_cut_at_the_cap(gateway_factory, bomb, scenario, status):
    with RawUpstreamThread(hostile) as upstream:
        provider = provider_create("hostile", f"{upstream.url}/{scenario}/v1")
        model_create("hostile-model", [(provider, "any", 0)])
        key = key_create("hostile", max_concurrent=4)
        gateway = gateway_factory()
        headers = {"authorization": f"Bearer {key}"}
        body = {"model": "hostile-model", "messages": [{"role": "user", "content": "hi"}]}
        # Warm: imports and first-request allocations are not the hostile body's.
        warm = httpx.get(f"{gateway.url}/v1/models", headers=headers, timeout=10)
        assert warm.status_code == 200
        before = peak_rss(gateway.process.pid)

        started = time.monotonic()
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        took = time.monotonic() - started

        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert "limit" in error["message"], error
        assert took < 10, took
        growth = peak_rss(gateway.process.pid) - before
        assert growth < MAX_GROWTH, f"the gateway's peak memory grew by {growth / 2**20:.0f} MiB"
        wait_usage(
            lambda events: any(e["model"] == "hostile-model" and e["status_code"] == status for e in events),
            timeout=5,
        )
        eventually(lambda: leases_held() == 0, timeout=5, what="the lease given back")
        # The gateway let go of the upstream at once instead of reading the rest.
        eventually(lambda: bool(upstream.left), timeout=5, what="the upstream connection closed")


def test_a_hostile_count_tokens_answer_is_cut_at_the_cap(gateway_factory, bomb):
    with RawUpstreamThread(hostile) as upstream:
        provider = provider_create("hostile-claude", f"{upstream.url}/bomb", dialect="anthropic")
        model_create("hostile-claude", [(provider, "claude-any", 0)])
        # A model no Anthropic deployment serves: count_tokens is the gateway's estimate, asked of nobody.
        model_create("estimated", [(provider_create("openai-side", f"{upstream.url}/none/v1"), "any", 0)])
        key = key_create("hostile-count")
        gateway = gateway_factory()
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        count = {"messages": [{"role": "user", "content": "count these words"}]}
        # Warm: the tokenizer the estimate uses is loaded before the hostile answer is measured.
        warm = httpx.post(
            f"{gateway.url}/v1/messages/count_tokens", json={**count, "model": "estimated"}, headers=headers
        )
        assert warm.status_code == 200 and warm.json()["input_tokens"] > 0, warm.text
        assert upstream.requests == []
        before = peak_rss(gateway.process.pid)

        started = time.monotonic()
        response = httpx.post(
            f"{gateway.url}/v1/messages/count_tokens",
            json={**count, "model": "hostile-claude"},
            headers=headers,
            timeout=30,
        )
        took = time.monotonic() - started

        # The upstream's answer was refused at the cap: the gateway's own estimate stands in.
        assert response.status_code == 200, response.text
        assert response.json()["input_tokens"] > 0
        assert took < 10, took
        growth = peak_rss(gateway.process.pid) - before
        assert growth < MAX_GROWTH, f"the gateway's peak memory grew by {growth / 2**20:.0f} MiB"
        assert len(upstream.requests) == 1 and b"/bomb/v1/messages/count_tokens" in upstream.requests[0]
        eventually(lambda: bool(upstream.left), timeout=5, what="the upstream connection closed")
