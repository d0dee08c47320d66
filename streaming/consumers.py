"""The playground websocket (/ws/playground/): the compare service with JSON frames instead of SSE.

A socket is authenticated either by an API key (programs: `Authorization: Bearer` or `x-api-key`; the
key alone counts, any session is ignored) or by the browser's Django session (then it runs as one of the
user's own keys, chosen per run). A session socket ends (close 4401) when its session ends: at logout at
once, and a chat on a session that has expired or been deleted is refused. Frames in:
`{"type": "chat", "models": [...], "messages": [...] | "messages_by_model": {...}, ...params}` and
`{"type": "cancel"}`, each at most GATEWAY_MAX_BODY_BYTES. Frames out: the events of /v1/compare, and
run-level `error` frames (no `model`) for frames the socket cannot act on; the socket stays open after them.
"""

import asyncio
import logging
from contextlib import aclosing

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.auth import key_context_for_owner, key_context_resolve
from accounts.context import KeyContext
from accounts.selectors import playground_keys
from accounts.services import playground_key_get_or_create
from aigateway.errors import GatewayError, bad_request
from streaming.compare import CompareRun, compare_prepare, error_event
from streaming.edge import json_depth_check
from streaming.refusals import refusal_note
from streaming.session_sockets import session_group, session_user

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401


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


def _run_finished(task: asyncio.Task) -> None:
    # The client gone while its frames were being sent (ClientDisconnected is an OSError) ends a run too.
    if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, OSError):
        logger.error("playground run failed", exc_info=exc)


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.run: CompareRun | None = None
        self.run_task: asyncio.Task | None = None
        self.auth: str | None = None
        self.session_key: str | None = None
        self.session_watch: asyncio.Task | None = None
        self.ending = False

    async def __call__(self, scope, receive, send):
        try:
            return await super().__call__(scope, receive, send)
        finally:
            # However the socket ends: a send to a client already gone ends the consumer with an exception
            # instead of a disconnect message, and its run must not stream on for nobody.
            await self._run_stop()

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
        await self._run_stop()

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
        elif kind == "cancel":
            await self._cancel()
        elif kind is None:
            await self._refuse(bad_request("frame has no 'type'; expected 'chat' or 'cancel'", param="type"))
        else:
            await self._refuse(bad_request(f"unknown frame type {kind!r}; expected 'chat' or 'cancel'", param="type"))

    async def _refuse(self, error: GatewayError, ctx: KeyContext | None = None, body: dict | None = None) -> None:
        """A run-level error frame. A refusal is counted, and recorded when the key is known (the socket's
        API key, or the key a chat frame ran as): the frame then carries the record's request id."""
        if ctx is None and self.auth == "key" and self.plaintext_key:
            ctx = await key_context_resolve(self.plaintext_key)
        event = error_event(error)
        request_id = refusal_note(error, ctx, endpoint="compare", body=body)
        if request_id is not None:
            event["request_id"] = request_id
        await self.send_json(event)

    async def _chat(self, content: dict, size: int) -> None:
        if self.run_task is not None and not self.run_task.done():
            await self._refuse(
                GatewayError(409, "run_in_progress", 'a run is already in progress; send {"type": "cancel"} first')
            )
            return
        if self.auth == "session" and not await self._session_current():
            await self._session_end("it expired or was ended")
            return
        ctx = None
        try:
            ctx = await self._key_context(content.get("key_id"))
            prepared = await compare_prepare(ctx=ctx, body=content, body_size=size, meta=self.meta)
        except GatewayError as error:
            await self._refuse(error, ctx, content)
            return
        self.run = CompareRun(prepared)
        self.run_task = asyncio.create_task(self._stream(self.run))
        self.run_task.add_done_callback(_run_finished)

    async def _stream(self, run: CompareRun) -> None:
        async with aclosing(run.events()) as events:
            async for event in events:
                await self.send_json(event)

    async def _run_stop(self) -> None:
        """Cancel the run, if one is going, and wait until its models have stopped and been recorded."""
        task = self.run_task
        if task is None:
            return
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _cancel(self) -> None:
        if self.run_task is None or self.run_task.done():
            await self._refuse(GatewayError(409, "no_run", "there is no run in progress to cancel"))
            return
        self.run.cancel()

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
        await self._run_stop()
        await self._refuse(GatewayError(401, "session_ended", f"your session has ended ({why}); log in again"))
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _key_context(self, key_id) -> KeyContext:
        """The key this run pays with: the socket's API key, or one of the logged-in user's own keys."""
        if self.auth == "key":
            ctx = await key_context_resolve(self.plaintext_key)
            if ctx is None:
                raise GatewayError(401, "invalid_api_key", "invalid, disabled or expired API key")
            return ctx
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
