"""The playground websocket (/ws/playground/): the compare service with JSON frames instead of SSE.

A socket is authenticated either by the browser's Django session (then it runs as one of the user's
own keys, chosen per run) or by an API key in `Authorization: Bearer` (programs). Frames in:
`{"type": "chat", "models": [...], "messages": [...] | "messages_by_model": {...}, ...params}` and
`{"type": "cancel"}`. Frames out: the events of /v1/compare, and run-level `error` frames (no
`model`) for frames the socket cannot act on; the socket stays open after them.
"""

import asyncio
from contextlib import aclosing

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.auth import key_context_for_owner, key_context_resolve, key_from_headers
from accounts.context import KeyContext
from accounts.selectors import playground_keys
from accounts.services import playground_key_get_or_create
from aigateway.errors import GatewayError, bad_request
from streaming.compare import CompareRun, compare_prepare, error_event
from streaming.edge import json_depth_check

CLOSE_UNAUTHENTICATED = 4401


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.run: CompareRun | None = None
        self.run_task: asyncio.Task | None = None
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self.scope["headers"]}
        self.plaintext_key = key_from_headers(headers)
        user = self.scope.get("user")
        await self.accept()
        if self.plaintext_key:
            self.auth = "key"
            problem = None if await key_context_resolve(self.plaintext_key) else "invalid, disabled or expired API key"
        else:
            self.auth = "session"
            problem = None if user is not None and user.is_authenticated else "log in, or send an API key"
        if problem:
            await self.send_json(error_event(GatewayError(401, "unauthenticated", problem)))
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.send_json({"type": "ready", "auth": self.auth})

    async def disconnect(self, code) -> None:
        task = getattr(self, "run_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @classmethod
    async def encode_json(cls, content) -> str:
        return orjson.dumps(content).decode()

    async def receive(self, text_data=None, bytes_data=None) -> None:
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
            await self._chat(content, len(text_data))
        elif kind == "cancel":
            await self._cancel()
        elif kind is None:
            await self._refuse(bad_request("frame has no 'type'; expected 'chat' or 'cancel'", param="type"))
        else:
            await self._refuse(bad_request(f"unknown frame type {kind!r}; expected 'chat' or 'cancel'", param="type"))

    async def _refuse(self, error: GatewayError) -> None:
        await self.send_json(error_event(error))

    async def _chat(self, content: dict, size: int) -> None:
        if self.run_task is not None and not self.run_task.done():
            await self._refuse(
                GatewayError(409, "run_in_progress", 'a run is already in progress; send {"type": "cancel"} first')
            )
            return
        try:
            ctx = await self._key_context(content.get("key_id"))
            prepared = await compare_prepare(ctx=ctx, body=content, body_size=size)
        except GatewayError as error:
            await self._refuse(error)
            return
        self.run = CompareRun(prepared)
        self.run_task = asyncio.create_task(self._stream(self.run))

    async def _stream(self, run: CompareRun) -> None:
        async with aclosing(run.events()) as events:
            async for event in events:
                await self.send_json(event)

    async def _cancel(self) -> None:
        if self.run_task is None or self.run_task.done():
            await self._refuse(GatewayError(409, "no_run", "there is no run in progress to cancel"))
            return
        self.run.cancel()

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
