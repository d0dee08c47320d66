"""The playground websocket (/ws/playground/): the compare service with JSON frames instead of SSE.

A socket is authenticated either by an API key (programs: `Authorization: Bearer` or `x-api-key`; the
key alone counts, any session is ignored) or by the browser's Django session (then it runs as one of the
user's own keys, chosen per run). A session socket ends (close 4401) when its session ends: at logout at
once, and a chat on a session that has expired or been deleted is refused. Frames in:
`{"type": "chat", "models": [...], "messages": [...] | "messages_by_model": {...}, "run_id"?, ...params}`,
`{"type": "resume", "run_id": ..., "after": <seq>}` and `{"type": "cancel"}`, each at most
GATEWAY_MAX_BODY_BYTES. Frames out: the events of /v1/compare, each with its `seq`; `saved` and `resumed`;
and run-level `error` frames (no `model`) for frames the socket cannot act on; the socket stays open after them.

Every chat is a turn of a saved conversation (streaming.playground_runs, the socket's user or its key's owner)
and runs as a resumable stream (streaming.resumable): a socket that goes away leaves its run going for
GATEWAY_RESUME_GRACE_SECONDS, and a `resume` frame on any socket of the same user, on any gateway process, picks it
up after the last event it saw. The turn's answers are saved by the run itself as it ends, watched or not.

A chat with `"arena": true` (or any chat continuing an arena run) is a turn of a blind battle (accounts.arena): two
models, the user's picks or drawn from the key's tier, answer as sides "a" and "b", and every frame of it, live or
resumed, names the side only (streaming.playground_arena) until the vote (streaming.arena_views) reveals them.
"""

import asyncio
import logging
from contextlib import aclosing

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from accounts.arena import Battle, arena_answer_record_async
from accounts.auth import key_context_for_owner, key_context_resolve
from accounts.context import KeyContext
from accounts.selectors import playground_keys
from accounts.services import playground_key_get_or_create
from aigateway.errors import GatewayError, bad_request
from streaming.compare import CompareRun, compare_prepare, error_event
from streaming.edge import json_depth_check
from streaming.playground_arena import (
    SIDES,
    arena_error_blind,
    arena_event,
    arena_pair_choose,
    arena_picks,
    arena_results,
)
from streaming.playground_redo import playground_run_turn_redo
from streaming.playground_runs import (
    TurnRecorder,
    arena_run_mismatch,
    playground_arena_turn_start,
    playground_run_get,
    playground_run_is_arena,
    playground_run_sides,
    playground_run_stream_lost,
    playground_run_turn_save,
    playground_run_turn_start,
    playground_turn_prompt,
    run_not_found,
)
from streaming.playground_tools import playground_turn_results
from streaming.refusals import refusal_note
from streaming.resumable import ResumableStream, new_stream_id, resumable_cancel, resumable_meta, resumable_replay
from streaming.session_sockets import session_group, session_user

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
FRAME_TYPES = "'chat', 'resume' or 'cancel'"
# How long a socket whose session ended waits for its cancelled run's last frames before it closes.
SESSION_END_WAIT_SECONDS = 3.0
# The compare frame that ends a run: the first field of its JSON is its type.
_COMPLETE_PREFIX = b'{"type":"complete"'
# Chat fields the page keeps with a saved run, to restore its settings.
_OPTION_FIELDS = ("temperature", "max_tokens")

_run_get = database_sync_to_async(playground_run_get)
_turn_start = database_sync_to_async(playground_run_turn_start)
_arena_turn_start = database_sync_to_async(playground_arena_turn_start)
_turn_save = database_sync_to_async(playground_run_turn_save)
_turn_redo = database_sync_to_async(playground_run_turn_redo)
_stream_lost = database_sync_to_async(playground_run_stream_lost)

# Events a run may be ahead of the socket that started it while that socket reads (the resume stream holds them for
# it meanwhile): a client that stops reading holds the providers back, as on /v1/compare.
LIVE_WINDOW = 64

# The compare runs streaming in this process, by stream id: a cancel stops one through the run itself, so each
# model reports itself cancelled and the run still ends with its `complete` event.
_compare_runs: dict[str, CompareRun] = {}


def scope_headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}


def socket_key(headers: dict[str, str]) -> str | None:
    """The API key a socket presents (perhaps empty), or None when it presents none. Only the headers that
    carry our keys count: `Authorization: Bearer ...` and `x-api-key`. Another scheme is no key: a browser
    sends `Authorization: Basic` for a `ws://user:pass@host/` URL, from any site's page."""
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    api_key = headers.get("x-api-key")
    return None if api_key is None else api_key.strip()


def scope_meta(scope) -> dict[str, str]:
    """The socket's request headers as Django's request.META names them (`HTTP_X_FOO`), for routing rules."""
    meta: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        name = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + name
        value = raw_value.decode("latin-1")
        meta[name] = f"{meta[name]},{value}" if name in meta else value
    return meta


def frame_size(text: str) -> int:
    """Bytes of a text frame as it arrived (UTF-8)."""
    return len(text) if text.isascii() else len(text.encode())


class ReaderPace:
    """Holds a run back while the socket that started it reads it but falls behind: at most LIVE_WINDOW events
    ahead of what the socket has sent. Once that socket leaves, the run goes at its own pace (into the resume
    buffer, which GATEWAY_RESUME_MAX_BYTES bounds)."""

    def __init__(self) -> None:
        self._room = asyncio.Semaphore(LIVE_WINDOW)
        self.reading = True
        # Set once the socket reads the stream live: events produced before that would reach only the buffer.
        self.attached = asyncio.Event()

    async def wait(self) -> None:
        await self.attached.wait()
        if self.reading:
            await self._room.acquire()

    def sent(self) -> None:
        self._room.release()

    def leave(self) -> None:
        self.attached.set()
        if self.reading:
            self.reading = False
            for _ in range(LIVE_WINDOW):
                self._room.release()  # a run waiting for room goes on


class BattleAnswers:
    """Notes each side's answer of an arena turn with its battle as the events go by: a side is `ok` (may be voted
    on) only once it finished without an error or a stop; a side still unanswered when the turn ends is not."""

    def __init__(self, battle: Battle, recorder: TurnRecorder) -> None:
        self.battle = battle
        self.recorder = recorder
        self.side_of = {battle.model_a: "a", battle.model_b: "b"}
        self.noted: set[str] = set()

    async def observe(self, event: dict) -> None:
        kind, model = event.get("type"), event.get("model")
        if kind in ("done", "error") and model in self.side_of:
            request_id = event.get("request_id") or self.recorder.answers[model].get("request_id") or ""
            await self._note(self.side_of[model], request_id, ok=kind == "done", provider=event.get("provider"))
        elif kind == "complete":
            await self.close()

    async def close(self) -> None:
        for model, side in self.side_of.items():
            if side not in self.noted:
                await self._note(side, self.recorder.answers[model].get("request_id") or "", ok=False, provider=None)

    async def _note(self, side: str, request_id: str, *, ok: bool, provider: str | None) -> None:
        self.noted.add(side)
        try:
            await arena_answer_record_async(
                battle_id=self.battle.battle_id, side=side, request_id=request_id, ok=ok, provider=provider or ""
            )
        except GatewayError as error:
            # Redis unreachable, or the battle expired: that side simply cannot be voted on.
            logger.warning("arena battle %s: side %s not noted: %s", self.battle.battle_id, side, error.code)


async def _saved_events(
    compare: CompareRun,
    *,
    run_id: int,
    turn_index: int,
    stream_id: str,
    pace: ReaderPace,
    stopped: list[str],
    battle: Battle | None = None,
):
    """The run's events, its turn saved as it ends: before its `complete` event goes out (so a page that reloads
    on it finds the turn saved), or, stopped early (`stopped` holds why), with what it had. This is the resumable
    stream's source, so it runs in the stream's own task whether or not a socket still reads it. A battle's events
    come out blind (sides, no names) and note each side's answer with the battle before `complete` goes out."""
    recorder = TurnRecorder(compare.request.models)
    answers = BattleAnswers(battle, recorder) if battle is not None else None
    saved = False
    try:
        async with aclosing(compare.events()) as events:
            async for event in events:
                recorder.observe(event)
                frame = event
                if answers is not None:
                    await answers.observe(event)
                    frame = arena_event(event, answers.side_of)
                if event.get("type") == "complete":
                    await _turn_save(
                        run_id=run_id, turn_index=turn_index, stream_id=stream_id, answers=recorder.result()
                    )
                    saved = True
                if frame is None:
                    continue
                await pace.wait()
                yield frame
    finally:
        _compare_runs.pop(stream_id, None)
        if not saved:
            # Stopped (nobody came back within the grace, a cancel from another process): a second cancellation
            # while the row is written must not lose it.
            ended = "cancelled" if "cancelled" in stopped else "interrupted"
            save = _turn_save(
                run_id=run_id,
                turn_index=turn_index,
                stream_id=stream_id,
                answers=recorder.result(unfinished=ended),
                status=ended,
            )
            try:
                await asyncio.shield(asyncio.ensure_future(save))
            except Exception as exc:
                logger.warning("playground run %s: the interrupted turn was not saved: %s", run_id, type(exc).__name__)
            if answers is not None:
                try:
                    await asyncio.shield(asyncio.ensure_future(answers.close()))
                except Exception as exc:
                    logger.warning("arena battle %s: answers not noted: %s", battle.battle_id, type(exc).__name__)


def _outcome(run, turn_index: int) -> dict:
    """A `complete` frame for a turn whose stream ended without one (stopped early): each model's saved outcome
    (by side, for a battle)."""
    turn = run.turns[turn_index] if run is not None and turn_index < len(run.turns) else {}
    results = {}
    for name, answer in turn.get("answers", {}).items():
        status = answer.get("status")
        if status == "done":
            results[name] = {"status": "done", **(answer.get("done") or {})}
        elif status == "error":
            results[name] = {"status": "error", "error": answer.get("error") or {}}
        else:
            results[name] = {"status": "cancelled"}
    sides = (turn.get("arena") or {}).get("sides")
    if sides:
        results = arena_results(results, {model: side for side, model in sides.items()})
    return {"type": "complete", "run_id": None, "results": results, "interrupted": True}


def _reader_finished(task: asyncio.Task) -> None:
    # The client gone while its frames were being sent (ClientDisconnected is an OSError) ends a reader too.
    if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, OSError):
        logger.error("playground stream reader failed", exc_info=exc)


def _int_field(value, name: str, *, required: bool) -> int | None:
    """A frame's id or sequence number: a non-negative integer (or left out, when it may be)."""
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"'{name}' must be a non-negative integer", param=name)
    return value


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The stream this socket reads (the run it started, or one it resumed) and the task that forwards it.
        self.stream_id: str | None = None
        self.reader: asyncio.Task | None = None
        self.auth: str | None = None
        self.session_key: str | None = None
        self.session_watch: asyncio.Task | None = None
        self.ending = False

    async def __call__(self, scope, receive, send):
        try:
            return await super().__call__(scope, receive, send)
        finally:
            # However the socket ends (a send to a client already gone ends the consumer with an exception
            # instead of a disconnect message), its reader stops; the run goes on for a resume.
            await self._reader_stop()

    async def connect(self) -> None:
        headers = scope_headers(self.scope)
        self.plaintext_key = socket_key(headers)
        self.meta = scope_meta(self.scope)
        user = self.scope.get("user")
        await self.accept()
        if self.plaintext_key is not None:
            # A key header: the key alone decides, never the browser's session (aigateway.asgi lets key
            # sockets skip the Origin check, so one from another site's page must not reach the session).
            self.auth = "key"
            problem = None if await key_context_resolve(self.plaintext_key) else "invalid, disabled or expired API key"
        elif user is not None and user.is_authenticated and self.scope["session"].session_key:
            self.auth = "session"
            self.session_key = self.scope["session"].session_key
            group = session_group(self.session_key)
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups.append(group)  # left again by websocket_disconnect
            self.session_watch = asyncio.create_task(self._watch_session())
            problem = None
        else:
            # No key, and no session: a logged-out browser, or a program (aigateway.asgi hands a socket with no
            # Origin and no key over without its cookies) that must send its key.
            problem = "log in, or send an API key as 'Authorization: Bearer <key>' or 'x-api-key'"
        if problem:
            await self._refuse(GatewayError(401, "unauthenticated", problem))
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.send_json({"type": "ready", "auth": self.auth})

    async def disconnect(self, code) -> None:
        if self.session_watch is not None:
            self.session_watch.cancel()
        # Only the reader: the run goes on for GATEWAY_RESUME_GRACE_SECONDS, for a resume from a reloaded page.
        await self._reader_stop()

    async def _watch_session(self) -> None:
        """A session that ends without a logout (it expires, or is deleted) ends its sockets too, within
        GATEWAY_PLAYGROUND_SESSION_CHECK_SECONDS, even while the tab sends nothing."""
        every = settings.GATEWAY_PLAYGROUND_SESSION_CHECK_SECONDS
        while not self.ending:
            await asyncio.sleep(every)
            try:
                current = await self._session_current()
            except Exception as exc:
                # The session store unreachable for a moment: the check before the next chat still holds.
                logger.warning("playground session check failed: %s", type(exc).__name__)
                continue
            if not current:
                try:
                    await self._session_end("it expired or was ended")
                except Exception as exc:
                    # The socket went away meanwhile: nothing left to tell.
                    logger.debug("ending a playground socket failed: %s", type(exc).__name__)
                return

    async def playground_session_ended(self, event) -> None:
        """The channel-layer message of streaming.session_sockets: this socket's session logged out."""
        await self._session_end("you logged out")

    @classmethod
    async def encode_json(cls, content) -> str:
        return orjson.dumps(content).decode()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.ending:
            return  # frames that arrived before the socket closed
        size = len(bytes_data or b"") if text_data is None else frame_size(text_data)
        limit = settings.GATEWAY_MAX_BODY_BYTES
        if size > limit:
            await self._refuse(
                GatewayError(413, "request_too_large", f"frame of {size} bytes exceeds the limit of {limit} bytes")
            )
            return
        if text_data is None:
            await self._refuse(bad_request("frames must be JSON text, got a binary frame"))
            return
        try:
            content = orjson.loads(text_data)
        except orjson.JSONDecodeError as exc:
            await self._refuse(bad_request(f"frame is not valid JSON: {exc}"))
            return
        if not isinstance(content, dict):
            await self._refuse(bad_request(f"frame must be a JSON object, got {type(content).__name__}"))
            return
        try:
            json_depth_check(text_data, content)
        except GatewayError as error:
            await self._refuse(error)
            return
        kind = content.get("type")
        if kind == "chat":
            await self._chat(content, size)
        elif kind == "resume":
            await self._resume(content)
        elif kind == "cancel":
            await self._cancel()
        elif kind is None:
            await self._refuse(bad_request(f"frame has no 'type'; expected {FRAME_TYPES}", param="type"))
        else:
            await self._refuse(bad_request(f"unknown frame type {kind!r}; expected {FRAME_TYPES}", param="type"))

    async def _refuse(
        self, error: GatewayError, ctx: KeyContext | None = None, body: dict | None = None, *, blind: bool = False
    ) -> None:
        """A run-level error frame. A refusal is counted, and recorded when the key is known (the socket's
        API key, or the key a chat frame ran as): the frame then carries the record's request id, unless it is a
        battle's (`blind`)."""
        if ctx is None and self.auth == "key" and self.plaintext_key:
            ctx = await key_context_resolve(self.plaintext_key)
        event = error_event(error)
        request_id = refusal_note(error, ctx, endpoint="compare", body=body)
        if request_id is not None and not blind:
            event["request_id"] = request_id
        await self.send_json(event)

    def _reading(self) -> bool:
        return self.reader is not None and not self.reader.done()

    async def _chat(self, content: dict, size: int) -> None:
        if self._reading():
            await self._refuse(
                GatewayError(409, "run_in_progress", 'a run is already in progress; send {"type": "cancel"} first')
            )
            return
        if self.auth == "session" and not await self._session_current():
            await self._session_end("it expired or was ended")
            return
        # Which saved conversation this turn continues, and whether it is a blind battle, are the socket's business,
        # not fields of the chat request.
        run_id = content.pop("run_id", None)
        arena = content.pop("arena", None)
        # Run the last turn again for one model, its new answer in the old one's place (streaming.playground_redo).
        regenerate = content.pop("regenerate", None)
        ctx = None
        hidden: list[str] = []
        fixed = False
        try:
            run_id = _int_field(run_id, "run_id", required=False)
            if arena is not None and not isinstance(arena, bool):
                raise bad_request("'arena' must be a boolean", param="arena")
            if regenerate is not None and not isinstance(regenerate, bool):
                raise bad_request("'regenerate' must be a boolean", param="regenerate")
            ctx = await self._key_context(content.get("key_id"))
            owner_id = self._owner_id(ctx)
            run = None
            if run_id is not None:
                run = await _run_get(user_id=owner_id, run_id=run_id)
                if run is None:
                    raise run_not_found(run_id)
            if arena or (run is not None and playground_run_is_arena(run)):
                arena = True
                hidden, fixed = await self._arena_body(content, ctx=ctx, run=run)
            prepared = await compare_prepare(ctx=ctx, body=content, body_size=size, meta=self.meta)
        except GatewayError as error:
            if hidden:
                # The refusal's request id would lead to its log entry, which names the model.
                await self._refuse(arena_error_blind(error, hidden), ctx, content, blind=True)
            else:
                await self._refuse(error, ctx, content)
            return
        prompt, system = playground_turn_prompt(content)
        options = {"key_id": ctx.key_id, "system": system}
        options.update({name: content[name] for name in _OPTION_FIELDS if content.get(name) is not None})
        stream_id = new_stream_id()
        turn = {
            "user_id": owner_id,
            "team_id": ctx.team_id,
            "run_id": run_id,
            "models": prepared.models,
            "prompt": prompt,
            "system": system,
            "options": options,
            "stream_id": stream_id,
        }
        battle = None
        try:
            if arena:
                run, turn_index, battle = await _arena_turn_start(**turn, shuffle=not fixed)
            elif regenerate:
                run, turn_index = await _turn_redo(**turn)
            else:
                run, turn_index = await _turn_start(**turn, results=playground_turn_results(content))
        except GatewayError as error:  # deleted meanwhile; no battle without Redis
            await self._refuse(error, ctx, content)
            return
        except DatabaseError as exc:
            # The turn could not be saved: nothing has run; the socket stays open.
            logger.warning("playground turn not saved: %s", type(exc).__name__)
            await self._refuse(GatewayError(503, "run_not_saved", "the run could not be saved; try again"))
            return
        compare = CompareRun(prepared)
        _compare_runs[stream_id] = compare
        pace, stopped = ReaderPace(), []
        source = _saved_events(
            compare,
            run_id=run.pk,
            turn_index=turn_index,
            stream_id=stream_id,
            pace=pace,
            stopped=stopped,
            battle=battle,
        )

        def stop(reason: str) -> None:
            # Stopped early (nobody back within the grace, a cancel from another process): through the run, so
            # each model is stopped and booked as a cancelled call.
            stopped.append(reason)
            compare.cancel()

        try:
            stream = await ResumableStream.open(source, ctx=ctx, kind="json", stream_id=stream_id, on_stop=stop)
        except Exception as exc:
            _compare_runs.pop(stream_id, None)
            await _stream_lost(user_id=owner_id, run_id=run.pk, stream_id=stream_id)
            logger.warning("playground run %s: its stream did not open: %s", run.pk, type(exc).__name__)
            await self._refuse(GatewayError(503, "stream_unavailable", "the run could not be started; try again"))
            return
        self.stream_id = stream_id
        saved = {"type": "saved", "run_id": run.pk, "turn": turn_index}
        if battle is not None:
            saved["arena"] = {"battle_id": battle.battle_id}
        live = stream.live()
        self._read(self._forward(live, saved, run_id=run.pk, turn_index=turn_index, user_id=owner_id, pace=pace))

    async def _resume(self, content: dict) -> None:
        """Read a saved run's current turn again, from the event after `after` to its end, live; on any process."""
        if self._reading():
            await self._refuse(
                GatewayError(409, "run_in_progress", 'a run is already in progress; send {"type": "cancel"} first')
            )
            return
        if self.auth == "session" and not await self._session_current():
            await self._session_end("it expired or was ended")
            return
        try:
            run_id = _int_field(content.get("run_id"), "run_id", required=True)
            after = _int_field(content.get("after", 0), "after", required=True)
            # Whoever owns the run may follow it, whichever of their keys ran it: the run names the stream.
            owner_id = self._owner_id(await self._socket_key_context())
            run = await _run_get(user_id=owner_id, run_id=run_id)
            if run is None:
                raise run_not_found(run_id)
            turn_index = len(run.turns) - 1
            stream_id = run.active_stream_id or (run.turns[-1].get("stream_id", "") if run.turns else "")
            meta = await resumable_meta(stream_id) if stream_id else {}
            if not meta:
                if run.active_stream_id:
                    # Its process ended (or its buffer expired) before the turn was saved: it never will be.
                    await _stream_lost(user_id=owner_id, run_id=run.pk, stream_id=run.active_stream_id)
                raise GatewayError(
                    410, "stream_ended", f"run {run_id} has no turn to resume: its last turn ended", param="run_id"
                )
            if meta.get("state") == "over_cap":
                raise GatewayError(
                    410,
                    "stream_not_resumable",
                    f"run {run_id}'s turn passed its resume buffer cap (GATEWAY_RESUME_MAX_BYTES); it goes on and is "
                    "saved when it ends",
                    param="run_id",
                )
            if meta.get("state") == "ended" and after > int(meta.get("last") or 0):
                raise bad_request(f"event {after} is past the end of run {run_id}'s turn", param="after")
        except GatewayError as error:
            await self._refuse(error)
            return
        self.stream_id = stream_id
        resumed = {"type": "resumed", "run_id": run.pk, "turn": turn_index, "after": after}
        battle_id = (run.turns[turn_index].get("arena") or {}).get("battle_id") if run.turns else None
        if battle_id:
            resumed["arena"] = {"battle_id": battle_id}
        replay = resumable_replay(stream_id, kind="json", after=after)
        self._read(self._forward(replay, resumed, run_id=run.pk, turn_index=turn_index, user_id=owner_id))

    async def _arena_body(self, content: dict, *, ctx: KeyContext, run) -> tuple[list[str], bool]:
        """Turn a battle's chat frame into the compare body of its two models. A new battle takes the user's picks
        (`models`: none, one or two) and draws the rest from the key's tier; a later turn of an arena run keeps the
        run's two models under their sides, each side's history in `messages_by_side` (or one shared `messages`).
        Returns the models the user did not name (kept out of refusals) and whether the sides are fixed."""
        by_side = content.pop("messages_by_side", None)
        if "messages_by_model" in content:
            raise bad_request(
                "a battle's messages are 'messages' (the same for both sides) or 'messages_by_side'",
                param="messages_by_model",
            )
        if "params_by_model" in content:
            raise bad_request("a battle's two sides share their parameters", param="params_by_model")
        if run is not None:
            if not playground_run_is_arena(run):
                raise arena_run_mismatch(run.pk, arena=True)
            if content.get("models") is not None:
                raise arena_run_mismatch(run.pk, arena=False)
            sides = playground_run_sides(run)
            pair, hidden, fixed = [sides["a"], sides["b"]], [sides["a"], sides["b"]], True
        else:
            picks = arena_picks(content.get("models"))
            pair = await arena_pair_choose(ctx=ctx, picks=picks)
            hidden, fixed = [name for name in pair if name not in picks], False
        content["models"] = pair
        if by_side is None:
            return hidden, fixed
        if "messages" in content:
            raise bad_request("send either 'messages' or 'messages_by_side', not both", param="messages_by_side")
        if not isinstance(by_side, dict) or sorted(by_side) != list(SIDES):
            raise bad_request(
                "'messages_by_side' must be an object with the sides 'a' and 'b'", param="messages_by_side"
            )
        if fixed:
            content["messages_by_model"] = {pair[0]: by_side["a"], pair[1]: by_side["b"]}
        elif by_side["a"] == by_side["b"]:
            content["messages"] = by_side["a"]
        else:
            # A new battle has no sides yet, so no side can have a history of its own.
            raise bad_request("a new battle's sides have no history yet: send 'messages'", param="messages_by_side")
        return hidden, fixed

    def _read(self, forward) -> None:
        self.reader = asyncio.create_task(forward)
        self.reader.add_done_callback(_reader_finished)

    async def _forward(
        self, frames, opening: dict, *, run_id: int, turn_index: int, user_id: int, pace: ReaderPace | None = None
    ) -> None:
        """Send `opening` (`saved` or `resumed`), then the stream's frames as they come; a stream that ended without
        its `complete` frame (stopped early, or its process gone) ends here with one built from the saved turn.
        `pace`: this socket started the run."""
        stream_id = self.stream_id
        complete = False
        try:
            await self.send_json(opening)
            if pace is not None:
                # Runs once the first read below has attached the socket to the stream and waits for frames.
                asyncio.get_running_loop().call_soon(pace.attached.set)
            async with aclosing(frames) as items:
                async for item in items:
                    if item is None:
                        continue  # a keepalive: websockets have their own pings
                    seq, frame = item
                    complete = complete or frame.startswith(_COMPLETE_PREFIX)
                    await self.send(text_data=frame.decode())
                    if pace is not None and seq is not None:
                        pace.sent()
        finally:
            if pace is not None:
                pace.leave()
        if not complete:
            run = await _run_get(user_id=user_id, run_id=run_id)
            if run is not None and run.active_stream_id == stream_id:
                await _stream_lost(user_id=user_id, run_id=run_id, stream_id=stream_id)
                run = await _run_get(user_id=user_id, run_id=run_id)
            await self.send_json(_outcome(run, turn_index))

    async def _reader_stop(self) -> None:
        """Stop reading the stream (the run itself goes on) and wait until the reader has let go."""
        task = self.reader
        if task is None:
            return
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run_cancel(self) -> None:
        """Stop the run this socket reads, in this process through the run itself, else wherever it runs."""
        compare = _compare_runs.get(self.stream_id)
        if compare is not None:
            compare.cancel()
        else:
            await resumable_cancel(self.stream_id)

    async def _cancel(self) -> None:
        if not self._reading():
            await self._refuse(GatewayError(409, "no_run", "there is no run in progress to cancel"))
            return
        await self._run_cancel()

    async def _session_current(self) -> bool:
        """Whether the socket's session still logs in its user (not logged out, expired, deleted, or
        invalidated by a password change); the user is read afresh, so a change of staff status counts."""
        user = await session_user(self.session_key)
        if not user.is_authenticated or user.pk != self.scope["user"].pk:
            return False
        self.scope["user"] = user
        return True

    async def _session_end(self, why: str) -> None:
        if self.ending:
            return
        self.ending = True
        if self._reading():
            # A session that ended stops its run too (booked as cancelled), not only its reader, which passes on
            # the models' cancellations first.
            await self._run_cancel()
            await asyncio.wait([self.reader], timeout=SESSION_END_WAIT_SECONDS)
        await self._reader_stop()
        await self._refuse(GatewayError(401, "session_ended", f"your session has ended ({why}); log in again"))
        await self.close(code=CLOSE_UNAUTHENTICATED)

    def _owner_id(self, ctx: KeyContext | None) -> int:
        """Whose saved runs the socket works on: the session's user, or the owner of the socket's key."""
        return self.scope["user"].pk if self.auth == "session" else ctx.owner_id

    async def _socket_key_context(self) -> KeyContext | None:
        if self.auth != "key":
            return None
        ctx = await key_context_resolve(self.plaintext_key)
        if ctx is None:
            raise GatewayError(401, "invalid_api_key", "invalid, disabled or expired API key")
        return ctx

    async def _key_context(self, key_id) -> KeyContext:
        """The key this run pays with: the socket's API key, or one of the logged-in user's own keys."""
        if self.auth == "key":
            return await self._socket_key_context()
        if key_id is not None and (isinstance(key_id, bool) or not isinstance(key_id, int)):
            raise bad_request("'key_id' must be the id of one of your keys", param="key_id")
        ctx = await self._session_key_context(key_id)
        if ctx is None:
            raise GatewayError(
                403,
                "no_usable_key",
                "you have no enabled API key to run the playground with; an administrator can issue one"
                if key_id is None
                else f"key {key_id} is not one of your enabled, unexpired keys",
                param="key_id",
            )
        return ctx

    @database_sync_to_async
    def _session_key_context(self, key_id: int | None) -> KeyContext | None:
        user = self.scope["user"]
        if key_id is None:
            keys = playground_keys(user=user)
            if keys:
                key_id = keys[0].id
            elif user.is_staff:
                key_id = playground_key_get_or_create(user=user).id
            else:
                return None
        return key_context_for_owner(owner_id=user.id, key_id=key_id)
