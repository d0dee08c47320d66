"""Resumable streams: a stream that outlives its client.

A resumable stream runs its source (a relay call's rendered events, a compare run's, a background response's)
in a task of its own, the pump, instead of in the client's request. Every event gets a sequence number (an SSE
`id:` line, or a `seq` field in a JSON frame) and goes two ways: to the client reading it live, at once, and
into a buffer in Redis (a Redis Stream whose entry ids are `0-<seq>`), in batches, by the stream's keeper task.

When the live client leaves, the pump goes on for GATEWAY_RESUME_GRACE_SECONDS. A client that reconnects with
the same key (`GET /v1/streams/{id}` with `Last-Event-ID`, or a playground `resume` frame) reads the buffer
after its last id and then the live rest as the keeper appends it, on whichever gateway process it reaches;
while it reads, it keeps a reader mark in Redis that holds the grace open. Nobody back within the grace: the
pump is cancelled, which closes the upstream and books the call as a client disconnect with the tokens produced
(the relay's own cleanup, exactly once). A background stream (see streaming.background) has no grace: it runs to
its end with or without readers, and stops early only when cancelled (a cancel mark any process may set).

Bounds: a buffer holds at most GATEWAY_RESUME_MAX_BYTES, all buffers together GATEWAY_RESUME_TOTAL_MAX_BYTES
(streaming/lua/resumable_append.lua keeps the total, forgetting each buffer once it has expired). A stream past
a cap stops being buffered: its live client is told so (an SSE comment, or a `resumable` frame) and keeps
streaming, and a reconnect gets 410. A buffer expires GATEWAY_RESUME_GRACE_SECONDS after its stream ended.
"""

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path

import orjson
from django.conf import settings

from accounts.context import KeyContext
from aigateway.errors import GatewayError
from aigateway.metrics import metrics_resumable
from aigateway.redis import redis_async
from aigateway.shutdown import shutdown_deadline
from streaming.relay import KEEPALIVE

logger = logging.getLogger(__name__)

KEY_PREFIX = "gw:rs:"
_TOTAL_KEY = KEY_PREFIX + "total"
_SIZES_KEY = KEY_PREFIX + "sizes"
_EXPIRING_KEY = KEY_PREFIX + "expiring"
_APPEND_SOURCE = (Path(__file__).parent / "lua" / "resumable_append.lua").read_text()
# A buffer holds at most this many events whatever their size (a bound on the Redis Stream's length).
MAX_EVENTS = 100_000
# How often the keeper looks for readers and a cancel mark; a reader renews its mark this often too.
TICK_SECONDS = 0.5
# A reader's mark lives this long unless renewed: a reader that died stops holding the grace soon after.
READER_MARK_SECONDS = 3 * TICK_SECONDS
# Frames the pump may run ahead of the client reading it live.
LIVE_WINDOW = 64
# A stream with no event for this long has its buffer's expiry pushed back (it is grace + 60 s from the last).
REFRESH_SECONDS = 30.0
# How long a resumed reader waits in one blocking read of the buffer.
READ_BLOCK_MS = 1000
# Told to a live client when its stream can no longer be resumed.
OVER_CAP_COMMENT = (
    b": this stream's resume buffer is full (GATEWAY_RESUME_MAX_BYTES): it goes on live but can no longer be "
    b"resumed\n\n"
)


def stream_key(stream_id: str) -> str:
    return KEY_PREFIX + stream_id


def _meta_key(stream_id: str) -> str:
    return KEY_PREFIX + stream_id + ":m"


def _reader_key(stream_id: str) -> str:
    return KEY_PREFIX + stream_id + ":r"


def _cancel_key(stream_id: str) -> str:
    return KEY_PREFIX + stream_id + ":c"


def new_stream_id() -> str:
    return "rs_" + uuid.uuid4().hex


def sse_frames(chunk: bytes) -> list[bytes]:
    """The SSE events of one rendered chunk, each with its blank line (comments included, as events of
    their own). A renderer's chunk is usually one event; split so each gets its own id."""
    if chunk.count(b"\n\n") == 1 and chunk.endswith(b"\n\n"):
        return [chunk]
    return [part + b"\n\n" for part in chunk.split(b"\n\n") if part]


class ResumableStream:
    """One resumable stream in the process that runs it. `open` starts it; `live()` is its first client."""

    _running: dict[str, "ResumableStream"] = {}

    def __init__(self, source: AsyncIterator, *, ctx: KeyContext, kind: str, stream_id: str, background: bool) -> None:
        self.source = source
        self.key_id = ctx.key_id
        self.kind = kind  # "sse": bytes chunks of SSE events; "json": event dicts (the playground's frames)
        self.stream_id = stream_id
        self.background = background
        self.seq = 0
        # Frames the live client has not read yet (seq, bytes; None: a keepalive), and whether one reads.
        self._live: deque = deque()
        self._live_wakeup = asyncio.Event()
        self._live_room = asyncio.Event()
        self.attached = False
        # Until its first client starts reading (or gives up), what the pump makes is kept for it too.
        self.expecting = True
        self._live_taken = False
        # Frames waiting for the keeper to append them to the buffer.
        self._pending: list[tuple[int, bytes]] = []
        self._pending_wakeup = asyncio.Event()
        self.buffering = True
        self.ended = False
        # Why the pump was stopped early ("expired", "cancelled"), if it was.
        self.stopped = ""
        self.detached_at = time.monotonic()
        self.grace = settings.GATEWAY_RESUME_GRACE_SECONDS
        # Called with the reason when the stream is stopped early, before the pump is cancelled (a relay call
        # then books itself as cancelled rather than as a client gone).
        self.on_stop: Callable[[str], None] | None = None
        self.pump: asyncio.Task | None = None
        self.keeper: asyncio.Task | None = None

    @classmethod
    async def open(
        cls,
        source: AsyncIterator,
        *,
        ctx: KeyContext,
        kind: str = "sse",
        stream_id: str = "",
        background: bool = False,
        on_stop: Callable[[str], None] | None = None,
    ) -> "ResumableStream":
        """Start running `source` as a resumable stream (its meta stored first, so a reconnect can find it
        as soon as its id is known)."""
        stream = cls(source, ctx=ctx, kind=kind, stream_id=stream_id or new_stream_id(), background=background)
        stream.on_stop = on_stop
        ttl_ms = int((stream.grace + 60) * 1000)
        meta = {
            "key_id": ctx.key_id,
            "owner_id": ctx.owner_id,
            "kind": kind,
            "state": "live",
            "background": int(background),
            "last": 0,
        }
        try:
            async with redis_async().pipeline(transaction=False) as pipe:
                pipe.hset(_meta_key(stream.stream_id), mapping=meta)
                pipe.pexpire(_meta_key(stream.stream_id), ttl_ms)
                await pipe.execute()
        except Exception as exc:
            # Redis unreachable (a failover under way): the stream runs live all the same, only not resumable.
            logger.warning("resumable stream %s: not buffered, Redis unreachable: %s", stream.stream_id,
                           type(exc).__name__)  # fmt: skip
            stream.buffering = False
        stream.pump = asyncio.ensure_future(stream._pump())
        stream.keeper = asyncio.ensure_future(stream._keep())
        cls._running[stream.stream_id] = stream
        metrics_resumable("opened")
        return stream

    # The pump ----------------------------------------------------------------------------------------

    def _frames(self, item) -> list[tuple[int, bytes] | tuple[None, bytes]]:
        if self.kind == "json":
            self.seq += 1
            return [(self.seq, orjson.dumps({**item, "seq": self.seq}))]
        out = []
        for frame in sse_frames(item):
            if frame.startswith(b":"):
                out.append((None, frame))  # a comment (a keepalive): live only, no id
                continue
            self.seq += 1
            out.append((self.seq, b"id: %d\n" % self.seq + frame))
        return out

    async def _pump(self) -> None:
        try:
            async with aclosing(self.source) as source:
                async for item in source:
                    if item is None:
                        if self.attached:
                            self._live.append(None)
                            self._live_wakeup.set()
                        continue
                    for seq, frame in self._frames(item):
                        if seq is not None and self.buffering:
                            self._pending.append((seq, frame))
                            self._pending_wakeup.set()
                        if self.attached or self.expecting:
                            self._live.append((seq, frame))
                            self._live_wakeup.set()
                    # A client reading live holds the source back as a plain stream would: at most LIVE_WINDOW
                    # frames ahead of it (the relay then stops reading the provider). Without one it runs freely.
                    while self.attached and len(self._live) >= LIVE_WINDOW:
                        self._live_room.clear()
                        await self._live_room.wait()
        except asyncio.CancelledError:
            if not self.stopped:
                raise
        except Exception:
            logger.exception("resumable stream %s: its source failed", self.stream_id)
        finally:
            self.ended = True
            self._live_wakeup.set()
            self._pending_wakeup.set()
            self.expecting = False

    def stop(self, reason: str) -> None:
        """Stop the stream early (nobody came back within the grace, or a cancel): its source is closed, so
        the upstream is closed and the call booked."""
        if self.ended or self.stopped:
            return
        self.stopped = reason
        if self.on_stop is not None:
            self.on_stop(reason)
        if self.pump is not None:
            self.pump.cancel()
        metrics_resumable(reason)

    # The keeper: the buffer, the reader marks, the grace, a cancel ---------------------------------------

    async def _keep(self) -> None:
        client = redis_async()
        append = client.register_script(_APPEND_SOURCE)
        refresh_at = time.monotonic() + REFRESH_SECONDS
        try:
            while True:
                if not self._pending and not self.ended:
                    self._pending_wakeup.clear()
                    try:
                        async with asyncio.timeout(TICK_SECONDS):
                            await self._pending_wakeup.wait()
                    except TimeoutError:
                        pass
                ended = self.ended
                batch, self._pending = self._pending, []
                now = time.monotonic()
                if self.buffering and (batch or ended or now >= refresh_at):
                    # An empty append now and then keeps a quiet stream's buffer from expiring under it.
                    await self._append(append, batch, ended)
                    refresh_at = now + REFRESH_SECONDS
                if ended:
                    break
                await self._watch(client)
        except Exception as exc:
            # Redis gone: the stream goes on live, but cannot be resumed.
            logger.warning("resumable stream %s: buffering stopped: %s", self.stream_id, type(exc).__name__)
            self.buffering = False
            if not self.attached and not self.expecting and not self.background:
                self.stop("expired")  # nobody reads it live, and nobody can resume it
            if self.pump is not None:
                await asyncio.gather(self.pump, return_exceptions=True)
        finally:
            self._running.pop(self.stream_id, None)
            metrics_resumable("closed")

    async def _append(self, append, batch: list[tuple[int, bytes]], ended: bool) -> None:
        ttl_ms = int(self.grace * 1000) if ended else int((self.grace + 60) * 1000)
        args: list = [
            self.stream_id,
            int(time.time() * 1000),
            ttl_ms,
            settings.GATEWAY_RESUME_MAX_BYTES,
            settings.GATEWAY_RESUME_TOTAL_MAX_BYTES,
            MAX_EVENTS,
            "end" if ended else "",
        ]
        for seq, frame in batch:
            args.extend((seq, frame))
        keys = [stream_key(self.stream_id), _meta_key(self.stream_id), _TOTAL_KEY, _SIZES_KEY, _EXPIRING_KEY]
        if await append(keys=keys, args=args) == 0:
            self.buffering = False
            logger.info("resumable stream %s: over its buffer cap, no longer resumable", self.stream_id)
            if self.attached:
                self._live.append((None, over_cap_notice(self.kind)))
                self._live_wakeup.set()
            elif not self.background:
                self.stop("expired")

    async def _watch(self, client) -> None:
        """One tick: a cancel mark stops the stream; so does the grace passing with no reader anywhere."""
        reader, cancel = await client.mget(_reader_key(self.stream_id), _cancel_key(self.stream_id))
        if cancel is not None:
            self.stop("cancelled")
            return
        now = time.monotonic()
        if self.attached or reader is not None:
            self.detached_at = now
        elif not self.background and now - self.detached_at >= self.grace:
            self.stop("expired")

    # The first client -------------------------------------------------------------------------------

    async def live(self) -> AsyncIterator[tuple[int | None, bytes] | None]:
        """The stream for the client that started it: (seq, frame) as they come (seq None: a comment), None
        for a keepalive. Closing it (the client left) starts the grace; the stream goes on meanwhile."""
        if self._live_taken:
            raise RuntimeError("a resumable stream has one live reader")
        self._live_taken = self.attached = True
        self.expecting = False
        try:
            while True:
                while self._live:
                    item = self._live.popleft()
                    self._live_room.set()
                    yield item
                if self.ended:
                    return
                self._live_wakeup.clear()
                await self._live_wakeup.wait()
        finally:
            self.attached = False
            self._live.clear()
            self._live_room.set()
            self.detached_at = time.monotonic()
            if not self.buffering and not self.background:
                self.stop("expired")  # nothing buffered to resume from: nobody can come back

    @classmethod
    def running(cls, stream_id: str) -> "ResumableStream | None":
        return cls._running.get(stream_id)


async def resumable_drain() -> None:
    """A stopping process: wait for the resumable streams it runs (a client may be gone from them, so no
    connection holds the server open for them) until the shutdown deadline, by which each ends itself."""
    loop = asyncio.get_running_loop()
    tasks = [
        task
        for stream in ResumableStream._running.values()
        for task in (stream.pump, stream.keeper)
        if task is not None and task.get_loop() is loop and not task.done()
    ]
    if not tasks:
        return
    deadline = shutdown_deadline()
    timeout = max(deadline - time.monotonic(), 0.0) + 5.0 if deadline is not None else 5.0
    await asyncio.wait(tasks, timeout=timeout)


async def resumable_cancel(stream_id: str) -> None:
    """Stop a stream, whichever process runs it: at once here, else within a tick there."""
    stream = ResumableStream.running(stream_id)
    if stream is not None:
        stream.stop("cancelled")
        return
    await redis_async().set(_cancel_key(stream_id), b"1", px=int((settings.GATEWAY_RESUME_GRACE_SECONDS + 60) * 1000))


async def resumable_meta(stream_id: str) -> dict[str, str]:
    """The stream's meta (key_id, kind, state, background, last), {} when it is unknown or has expired."""
    raw = await redis_async().hgetall(_meta_key(stream_id))
    return {key.decode(): value.decode() for key, value in raw.items()}


def _not_found(stream_id: str) -> GatewayError:
    return GatewayError(
        404,
        "stream_not_found",
        f"no resumable stream with id '{stream_id}': it never existed, belongs to another key, or ended more "
        f"than {settings.GATEWAY_RESUME_GRACE_SECONDS:g}s ago",
        param="stream_id",
    )


async def resumable_check(stream_id: str, *, ctx: KeyContext, after: int, scope: str = "key") -> dict[str, str]:
    """The meta of a stream `ctx` may resume after event `after`; 404 for an unknown stream or another key's
    (`scope` "owner": another owner's), 410 for one that can no longer be resumed (over its cap), 400 for an id
    past its end."""
    meta = resumable_meta_checked(stream_id, await resumable_meta(stream_id), ctx=ctx, scope=scope)
    if meta["state"] == "over_cap":
        raise GatewayError(
            410,
            "stream_not_resumable",
            f"stream '{stream_id}' passed its resume buffer cap (GATEWAY_RESUME_MAX_BYTES) and can no longer be "
            "resumed",
        )
    if after < 0:
        raise GatewayError(400, "invalid_request", "the last event id must be a non-negative integer")
    if meta["state"] == "ended" and after > int(meta.get("last") or 0):
        raise GatewayError(
            400,
            "invalid_request",
            f"event {after} is past the end of stream '{stream_id}' (its last event is {meta.get('last')})",
        )
    return meta


def resumable_meta_checked(stream_id: str, meta: dict[str, str], *, ctx: KeyContext, scope: str = "key") -> dict:
    """`meta` when `ctx` may read the stream (its key, or with `scope` "owner" a key of the same owner)."""
    field, mine = ("owner_id", ctx.owner_id) if scope == "owner" else ("key_id", ctx.key_id)
    if not meta or meta.get(field) != str(mine):
        raise _not_found(stream_id)
    return meta


async def resumable_replay(
    stream_id: str, *, kind: str, after: int, keepalive: float | None = None
) -> AsyncIterator[tuple[int | None, bytes] | None]:
    """Every event of the stream after `after`, then the live rest as it is appended, as (seq, frame); None
    for a keepalive (after `keepalive` seconds without an event). From any process. Call resumable_check
    first (its errors are the client's answer; `kind` is its meta's)."""
    client = redis_async()
    key, reader = stream_key(stream_id), _reader_key(stream_id)
    last = f"0-{after}"
    mark_at = 0.0
    quiet_since = time.monotonic()
    metrics_resumable("resumed")
    try:
        while True:
            now = time.monotonic()
            if now >= mark_at:
                await client.set(reader, b"1", px=int(READER_MARK_SECONDS * 1000))
                mark_at = now + TICK_SECONDS
            answer = await client.xread({key: last}, count=500, block=READ_BLOCK_MS)
            if not answer:
                if not await client.exists(_meta_key(stream_id)):
                    return  # expired meanwhile (its process died): nothing more will come
                if keepalive and time.monotonic() - quiet_since >= keepalive:
                    quiet_since = time.monotonic()
                    yield None
                continue
            quiet_since = time.monotonic()
            for entry_id, fields in answer[0][1]:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                end = fields.get(b"x")
                if end is not None:
                    if end == b"over_cap":
                        yield None, over_cap_notice(kind)
                    return
                yield int(last.split("-", 1)[1]), fields[b"e"]
    finally:
        try:
            await asyncio.shield(client.delete(reader))
        except Exception as exc:  # the mark lapses by itself
            logger.info("resumable stream %s: reader mark left to expire: %s", stream_id, type(exc).__name__)


def over_cap_notice(kind: str) -> bytes:
    """What a reader is told when the stream it reads passed its buffer cap."""
    if kind == "json":
        return orjson.dumps({"type": "resumable", "resumable": False, "reason": "the resume buffer is full"})
    return OVER_CAP_COMMENT


async def sse_live(stream: ResumableStream):
    """The body of a resumable SSE stream for the client that started it."""
    async with aclosing(stream.live()) as frames:
        async for item in frames:
            yield KEEPALIVE if item is None else item[1]


async def sse_replay(stream_id: str, after: int):
    """The body of a resumed SSE stream: the events after `after`, then the live rest."""
    keepalive = settings.GATEWAY_SSE_KEEPALIVE_SECONDS or None
    async with aclosing(resumable_replay(stream_id, kind="sse", after=after, keepalive=keepalive)) as frames:
        async for item in frames:
            yield KEEPALIVE if item is None else item[1]
