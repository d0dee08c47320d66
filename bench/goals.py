"""The hot-path goal figures the relay bench reports, and the stored baseline they are checked against.

- Stream fan-out latency: how long one upstream event takes to reach the client's socket. An upstream
  server in the bench process stamps each event as it writes it; a client in the same process stamps its
  arrival (one clock). Measured direct (the loopback's own cost) and through the gateway.
- Added time to first byte with an ordinary client (httpx), besides the raw-socket client's figure.
- Added p99 latency at half of saturation: wrk pacing its connections to half of the measured requests
  per second (bench_relay.latency_at_rate), the direct upstream at the same rate subtracted.
- The baseline (bench/baseline.json): each figure may regress by at most 20%.
"""

import asyncio
import json
import time
from pathlib import Path

import httpx
import orjson

BASELINE_PATH = Path(__file__).resolve().parent / "baseline.json"
REGRESSION_LIMIT = 0.20
# Figures in milliseconds this small are within the machine's noise: only a regression larger than this
# (on top of the 20%) counts.
NOISE_FLOOR_MS = 0.15
FANOUT_EVENTS = 60
FANOUT_INTERVAL_S = 0.02
MESSAGES = [{"role": "user", "content": "Benchmark the relay, please"}]


class FanoutUpstream:
    """An OpenAI-compatible streaming upstream on loopback: one event every FANOUT_INTERVAL_S, each
    stamped (perf_counter) as it is written. One stream at a time."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = port

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if not head.startswith(b"POST ") or b"/chat/completions" not in head.split(b"\r\n", 1)[0]:
                    # Anything else (the gateway's health probe) must not reset the stream being measured.
                    writer.write(
                        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                    )
                    await writer.drain()
                    continue
                await self._stream(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.sent = []
        for index in range(FANOUT_EVENTS):
            await asyncio.sleep(FANOUT_INTERVAL_S)
            chunk = {
                "id": "chatcmpl-fanout",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "fanout",
                "choices": [{"index": 0, "delta": {"content": f" t{index}"}, "finish_reason": None}],
            }
            if index == FANOUT_EVENTS - 1:
                chunk["choices"][0]["finish_reason"] = "stop"
            event = b"data: " + orjson.dumps(chunk) + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.sent.append(time.perf_counter())
            await writer.drain()
        done = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        await writer.drain()


async def _read_stream(host: str, port: int, path: str, key: str, model: str) -> list[tuple[float, bytes]]:
    """(arrival time, bytes) of each body chunk of one streamed request, read off a raw socket."""
    reader, writer = await asyncio.open_connection(host, port)
    payload = orjson.dumps({"model": model, "messages": MESSAGES, "stream": True})
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"fan-out stream refused: {head[:200]!r}")
    arrivals = []
    buffer = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        now = time.perf_counter()
        if size == 0:
            break
        buffer += data[:-2]
        # One SSE event per chunk in practice; split anyway, so a merged chunk still counts each event.
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event.startswith(b"data: {"):
                arrivals.append((now, event))
    writer.close()
    return arrivals


async def fanout_latencies(upstream: FanoutUpstream, base: str, key: str, model: str, streams: int) -> list[float]:
    """Milliseconds from the upstream writing each event to the client reading it, over `streams` streams."""
    url = httpx.URL(base)
    latencies = []
    for _ in range(streams):
        arrivals = await _read_stream(url.host, url.port, url.path.rstrip("/") + "/chat/completions", key, model)
        token_events = [at for at, event in arrivals if b'"content"' in event]
        if len(token_events) != FANOUT_EVENTS:
            raise RuntimeError(f"fan-out: {len(token_events)} events arrived of {FANOUT_EVENTS}")
        latencies.extend((arrived - sent) * 1000 for arrived, sent in zip(token_events, upstream.sent, strict=True))
    return latencies


async def ttfb_httpx(base: str, key: str, model: str, *, total: int) -> list[float]:
    """Time to first byte (ms) of streamed completions from an ordinary client: httpx, keep-alive."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    results = []
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(total + 5):
            started = time.perf_counter()
            async with client.stream("POST", base + "/chat/completions", json=body, headers=headers) as response:
                chunks = response.aiter_raw()
                await anext(chunks)
                first = time.perf_counter()
                async for _ in chunks:
                    pass
            if index >= 5:  # the first few open the connection and warm caches
                results.append((first - started) * 1000)
    return results


def baseline_check(figures: dict[str, float], *, path: Path = BASELINE_PATH) -> list[str]:
    """The figures that regressed by more than REGRESSION_LIMIT against the stored baseline. A figure
    named `*_rps` is better higher; every other (milliseconds) is better lower."""
    if not path.exists():
        return []
    baseline = json.loads(path.read_text())["figures"]
    problems = []
    for name, old in baseline.items():
        new = figures.get(name)
        if new is None:
            continue
        if name.endswith("_rps"):
            if new < old * (1 - REGRESSION_LIMIT):
                problems.append(f"{name}: {new:.0f} req/s, baseline {old:.0f} (-{(1 - new / old) * 100:.0f}%)")
        elif new > old * (1 + REGRESSION_LIMIT) + NOISE_FLOOR_MS:
            problems.append(f"{name}: {new:.2f} ms, baseline {old:.2f} ms (+{(new / old - 1) * 100:.0f}%)")
    return problems


def baseline_write(figures: dict[str, float], note: str, *, path: Path = BASELINE_PATH) -> None:
    path.write_text(json.dumps({"note": note, "figures": figures}, indent=2, sort_keys=True) + "\n")
