"""What one upstream request costs the gateway's process: CPU microseconds and requests per second of the
upstream client (providers.upstream_transport: httpx's Response over aiohttp, with its pool slot, proxy
choice and decoding checks) and of aiohttp's ClientSession alone under it, sequential and concurrent,
against a minimal keep-alive server in a subprocess.

Usage: python bench/bench_upstream_client.py [--requests 5000] [--concurrency 32] [--loop uvloop|asyncio]
"""

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from providers.upstream_transport import UpstreamTransport  # noqa: E402

REQUEST_BODY = b'{"model":"sim-echo","messages":[{"role":"user","content":"hello there"}]}'
RESPONSE_BODY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"sim-echo",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"lorem ipsum dolor sit amet consectetur"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"server: bench\r\nx-request-id: req_0123456789abcdef\r\nopenai-processing-ms: 12\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(RESPONSE_BODY), RESPONSE_BODY)
)
HEADERS = [
    ("authorization", "Bearer sk-bench-0123456789"),
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("accept-encoding", "identity"),
    ("user-agent", "aigateway"),
]
TIMEOUTS = {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 5.0}


class _Answer(asyncio.Protocol):
    """Answers every request on the connection with RESPONSE (requests are small: head and body in
    few reads; the server counts the blank lines and Content-Length to find each end)."""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(RESPONSE)


def serve() -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    uvloop.run(main())


def _aiohttp_session():
    """A session configured as UpstreamTransport configures its own."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, use_dns_cache=False)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=True,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept-Encoding": "identity"},
        skip_auto_headers=("User-Agent", "Content-Type", "Accept"),
    )
    return session, aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0, sock_read=30.0)


async def _aiohttp_case(url: str):
    session, timeout = _aiohttp_session()

    async def one() -> None:
        response = await session.request(
            "POST", url, headers=HEADERS, data=REQUEST_BODY, timeout=timeout, allow_redirects=False
        )
        await response.read()
        response.release()

    return one, session.close


async def _transport_case(url: str):
    transport = UpstreamTransport(max_connections=1000)

    async def one() -> None:
        response = await transport.send("POST", url, HEADERS, REQUEST_BODY, TIMEOUTS)
        await response.aread()
        await response.aclose()

    return one, transport.aclose


CASES: dict[str, Callable[[str], Awaitable]] = {
    "UpstreamTransport.send": _transport_case,
    "  of which aiohttp ClientSession": _aiohttp_case,
}


async def _measure(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> tuple[float, float]:
    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    share, extra = divmod(requests, concurrency)
    counts = [share + (1 if i < extra else 0) for i in range(concurrency)]
    await asyncio.gather(*(worker(min(count, 50)) for count in counts))  # warm: connections, caches
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(count) for count in counts))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests * 1e6, requests / wall


async def run(url: str, requests: int, concurrency: int) -> None:
    print(f"{requests} POSTs per cell, response {len(RESPONSE)} B; client process CPU per request, requests/s")
    print(f"{'client':38} {'sequential':>22} {f'{concurrency} concurrent':>22}")
    for name, build in CASES.items():
        one, close = await build(url)
        cells = []
        for parallel in (1, concurrency):
            cpu_us, rps = await _measure(one, requests, parallel)
            cells.append(f"{cpu_us:7.1f} us {rps:8.0f}/s")
        await close()
        print(f"{name:38} {cells[0]:>22} {cells[1]:>22}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the gateway runs uvloop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        coroutine = run(f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, args.concurrency)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
