"""Stored responses of the Responses API (`store`, its default): what a finished call leaves for its key's owner to
read back (GET /v1/responses/{id}, its input items), continue (`previous_response_id`) or delete.

A call's entry rides in its usage event (`event["stored_response"]`) and the usage flush writes the StoredResponse
row, so nothing on the request path writes to the database. Until the flush has written it (about two seconds), a
short-lived copy in Redis answers reads, so a client may read or continue a response the moment it has it. A DELETE
removes both and leaves a tombstone the flush honours, so a response deleted before its row was written is never
written. Rows go GATEWAY_RESPONSES_RETENTION_DAYS after their call (a beat task, in batches; 0 keeps them until
deleted).

The response object, the input items and the whole conversation (history, input, output as input items) are each
zlib-compressed JSON; in the entry they are base64, as the entry travels as JSON.
"""

import base64
import binascii
import logging
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from aigateway.db import db_read
from aigateway.redis import redis_async, redis_sync
from aigateway.retention import Expiry, rows_expire

logger = logging.getLogger(__name__)

# The copy that answers reads until the flush has written the row (the flush drops it once the row is there).
STORED_COPY_PREFIX = "gw:resp:stored:"
STORED_COPY_SECONDS = 600
# A deleted response's mark: its entry may still be queued for the flush, which must not write it. Kept as long
# as a usage event may wait for a flush (accounts.usage keeps its pending totals as long).
TOMBSTONE_PREFIX = "gw:resp:deleted:"
TOMBSTONE_SECONDS = 7 * 86400
# Column sizes of StoredResponse.
RESPONSE_ID_MAX = 64
MODEL_MAX = 128
STATUS_MAX = 16
_BLOBS = ("response", "input_items", "conversation")
_VIEW_FIELDS = ("response_id", "user_id", "api_key_id", "team_id", "model", "status", "previous_response_id")
# A retention run's rows per batch and time budget (as accounts.retention's).
EXPIRE_BATCH_SIZE = 1000
EXPIRE_RUN_SECONDS = 20.0


def _pack(value) -> bytes:
    return zlib.compress(orjson.dumps(value))


def _unpack(blob: bytes, default):
    try:
        value = orjson.loads(zlib.decompress(bytes(blob)))
    except (zlib.error, orjson.JSONDecodeError, TypeError):
        return default
    return value if isinstance(value, type(default)) else default


def stored_response_entry(
    *,
    response_id: str,
    api_key_id: int | None,
    user_id: int,
    team_id: int | None,
    model: str,
    status: str,
    previous_response_id: str | None,
    response: dict,
    input_items: list,
    conversation: list,
    created_at: float | None = None,
) -> dict:
    """A stored response as it travels (in the usage event, in the Redis copy): JSON-able, its three bodies
    compressed and base64-encoded."""
    blobs = {name: _pack(value) for name, value in zip(_BLOBS, (response, input_items, conversation), strict=True)}
    return {
        "response_id": response_id,
        "api_key_id": api_key_id,
        "user_id": user_id,
        "team_id": team_id,
        "model": model[:MODEL_MAX],
        "status": status[:STATUS_MAX],
        "previous_response_id": previous_response_id or "",
        "created_at": time.time() if created_at is None else created_at,
        **{name: base64.b64encode(blob).decode() for name, blob in blobs.items()},
        "stored_bytes": sum(len(blob) for blob in blobs.values()),
    }


@dataclass
class StoredView:
    """One stored response as its owner reads it; its bodies are decompressed when first asked for."""

    response_id: str
    user_id: int | None
    api_key_id: int | None
    team_id: int | None
    model: str
    status: str
    previous_response_id: str
    created_at: datetime
    blobs: dict[str, bytes]
    _read: dict = field(default_factory=dict, repr=False)

    def _body(self, name: str, default):
        if name not in self._read:
            self._read[name] = _unpack(self.blobs.get(name, b""), default)
        return self._read[name]

    def response(self) -> dict:
        """The response object as the client got it (with its id, `store` and `previous_response_id`)."""
        return self._body("response", {})

    def input_items(self) -> list:
        """This response's own input items, each with an id, oldest first."""
        return self._body("input_items", [])

    def conversation(self) -> list:
        """What a response continuing this one starts from: every earlier turn's input and output, then this
        one's input and output, as input items."""
        return self._body("conversation", [])


def _is_id(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _entry_checked(entry) -> dict | None:
    """`entry` if it is an entry the gateway made (its fields of the right types and sizes), else None."""
    if not isinstance(entry, dict):
        return None
    response_id = entry.get("response_id")
    if not isinstance(response_id, str) or not response_id.startswith("resp_") or len(response_id) > RESPONSE_ID_MAX:
        return None
    if not all(_is_id(entry.get(name)) for name in ("api_key_id", "user_id", "team_id")):
        return None
    texts = ("model", "status", "previous_response_id", *_BLOBS)
    if not all(isinstance(entry.get(name), str) for name in texts):
        return None
    created = entry.get("created_at")
    if isinstance(created, bool) or not isinstance(created, int | float):
        return None
    return entry


def _blobs_of(entry: dict) -> dict[str, bytes] | None:
    try:
        return {name: base64.b64decode(entry[name], validate=True) for name in _BLOBS}
    except (binascii.Error, ValueError):
        return None


def stored_response_view(entry) -> StoredView | None:
    """The view of an entry (the Redis copy), or None when it is not one the gateway made."""
    entry = _entry_checked(entry)
    blobs = None if entry is None else _blobs_of(entry)
    if blobs is None:
        return None
    try:
        created_at = datetime.fromtimestamp(entry["created_at"], tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return StoredView(
        response_id=entry["response_id"],
        user_id=entry["user_id"],
        api_key_id=entry["api_key_id"],
        team_id=entry["team_id"],
        model=entry["model"],
        status=entry["status"],
        previous_response_id=entry["previous_response_id"],
        created_at=created_at,
        blobs=blobs,
    )


def stored_response_fields(entry, *, fields: dict) -> dict | None:
    """StoredResponse field values from a usage event's `stored_response` member and its usage record's
    `fields` (whose key, user and team ids the flush has checked exist), or None when the member is not an entry
    the gateway made: the usage record is written all the same."""
    view = stored_response_view(entry)
    if view is None:
        return None
    return {
        "response_id": view.response_id,
        "created_at": view.created_at,
        "api_key_id": fields["api_key_id"],
        "user_id": fields["user_id"],
        "team_id": fields["team_id"],
        "model": view.model[:MODEL_MAX],
        "status": view.status[:STATUS_MAX],
        "previous_response_id": view.previous_response_id[:RESPONSE_ID_MAX],
        **{name: view.blobs[name] for name in _BLOBS},
        "stored_bytes": sum(len(blob) for blob in view.blobs.values()),
    }


def _copy_key(response_id: str) -> str:
    return STORED_COPY_PREFIX + response_id


def _tombstone_key(response_id: str) -> str:
    return TOMBSTONE_PREFIX + response_id


def stored_responses_write(events: list[dict], entries: dict) -> None:
    """The stored responses of a batch's calls (those whose event carries one), in the usage records'
    transaction. A response deleted meanwhile (its tombstone) is not written; once the rows are committed their
    Redis copies go (the database answers from now on), and a row whose response was deleted while the batch was
    being written is deleted again. A RedisError fails the batch, which the next flush retries."""
    from accounts.models import StoredResponse

    rows = []
    for event in events:
        row = stored_response_fields(entries.get(event["request_id"]), fields=event)
        if row is not None:
            rows.append(StoredResponse(**row))
    if not rows:
        return
    client = redis_sync()
    deleted = client.mget([_tombstone_key(row.response_id) for row in rows])
    rows = [row for row, tombstone in zip(rows, deleted, strict=True) if tombstone is None]
    if not rows:
        return
    try:
        # In a savepoint of its own: rows the database refuses cost the batch its stored responses, never its
        # usage records.
        with transaction.atomic():
            StoredResponse.objects.bulk_create(rows, ignore_conflicts=True)
    except (IntegrityError, DataError) as exc:
        logger.error("stored responses of a usage batch refused by the database, not stored: %s", exc)
        return
    written = [row.response_id for row in rows]
    transaction.on_commit(lambda: _stored_responses_settled(written))


def _stored_responses_settled(response_ids: list[str]) -> None:
    """After the rows are committed: drop their Redis copies, and delete again any deleted while they were
    being written (its DELETE found no row yet, and its tombstone came after the flush looked)."""
    from accounts.models import StoredResponse

    try:
        pipe = redis_sync().pipeline(transaction=False)
        pipe.delete(*[_copy_key(response_id) for response_id in response_ids])
        pipe.mget([_tombstone_key(response_id) for response_id in response_ids])
        _, tombstones = pipe.execute()
        gone = [response_id for response_id, mark in zip(response_ids, tombstones, strict=True) if mark is not None]
        if gone:
            StoredResponse.objects.filter(response_id__in=gone).delete()
    except (RedisError, OSError, DatabaseError) as exc:
        # The copies expire by themselves; a DELETE can be sent again.
        logger.warning("settling stored responses after the flush failed: %s", type(exc).__name__)


async def stored_response_keep(entry: dict) -> None:
    """Keep `entry` in Redis for STORED_COPY_SECONDS, so the response can be read and continued before the flush
    writes its row. Never raises: without the copy, the response is found once the flush has written it."""
    try:
        await redis_async().set(_copy_key(entry["response_id"]), orjson.dumps(entry), ex=STORED_COPY_SECONDS)
    except (RedisError, OSError, KeyError, TypeError) as exc:
        logger.warning("keeping stored response %s failed: %s", entry.get("response_id"), type(exc).__name__)


def _row_view(response_id: str) -> StoredView | None:
    from accounts.models import StoredResponse

    row = StoredResponse.objects.filter(response_id=response_id).values(*_VIEW_FIELDS, "created_at", *_BLOBS).first()
    if row is None:
        return None
    blobs = {name: bytes(row.pop(name)) for name in _BLOBS}
    return StoredView(**row, blobs=blobs)


async def _copy_and_tombstone(response_id: str) -> tuple[bytes | None, bool]:
    """The Redis copy of `response_id` (None: none) and whether it was deleted; (None, False) when Redis cannot be
    reached (the database still answers)."""
    try:
        copy, tombstone = await redis_async().mget([_copy_key(response_id), _tombstone_key(response_id)])
    except (RedisError, OSError) as exc:
        logger.warning("reading stored response %s from Redis failed: %s", response_id, type(exc).__name__)
        return None, False
    return copy, tombstone is not None


async def stored_response_find(*, owner_id: int, response_id: str) -> StoredView | None:
    """The stored response `response_id` if it belongs to `owner_id` (the key's owner): from its Redis copy while
    the flush has not written it yet, else from the database. None when there is none, it was deleted, or it is
    another owner's (the caller answers a 404 either way, so ids of others cannot be probed)."""
    if not isinstance(response_id, str) or not response_id or len(response_id) > RESPONSE_ID_MAX:
        return None
    copy, deleted = await _copy_and_tombstone(response_id)
    if deleted:
        return None
    view = None
    if copy is not None:
        try:
            view = stored_response_view(orjson.loads(copy))
        except orjson.JSONDecodeError:
            view = None
    if view is None:
        view = await db_read(_row_view, response_id)
    if view is None or view.user_id is None or view.user_id != owner_id:
        return None
    return view


def _row_delete(response_id: str) -> int:
    from accounts.models import StoredResponse

    return StoredResponse.objects.filter(response_id=response_id).delete()[0]


async def stored_response_delete(*, owner_id: int, response_id: str) -> bool:
    """Delete `owner_id`'s stored response `response_id`: its tombstone first (an entry still queued for the
    flush is then never written), its Redis copy, its row. False when there is none of this owner's."""
    if await stored_response_find(owner_id=owner_id, response_id=response_id) is None:
        return False
    pipe = redis_async().pipeline(transaction=True)
    pipe.set(_tombstone_key(response_id), b"1", ex=TOMBSTONE_SECONDS)
    pipe.delete(_copy_key(response_id))
    await pipe.execute()
    await db_read(_row_delete, response_id)
    return True


def stored_responses_expire(
    *, batch_size: int = EXPIRE_BATCH_SIZE, max_seconds: float = EXPIRE_RUN_SECONDS
) -> Expiry | None:
    """Delete stored responses made more than GATEWAY_RESPONSES_RETENTION_DAYS ago, oldest first, in batches
    through the created_at index, for at most `max_seconds`; None when the setting is 0 (kept until deleted).
    Logs one line. A database failure ends the run with a warning; the next run goes on."""
    days = settings.GATEWAY_RESPONSES_RETENTION_DAYS
    if days <= 0:
        logger.info("retention: stored responses kept until deleted")
        return None
    older_than = timezone.now() - timedelta(days=days)
    from accounts.models import StoredResponse

    try:
        expiry = rows_expire(
            StoredResponse,
            field="created_at",
            older_than=older_than,
            batch_size=batch_size,
            deadline=time.monotonic() + max_seconds,
        )
    except DatabaseError as exc:
        logger.warning("retention: database unavailable, the next run goes on: %s", type(exc).__name__)
        if not connection.in_atomic_block:
            close_old_connections()
        return None
    logger.info(
        "retention: %d stored responses deleted (older than %d days) in %.2fs, %d batches, longest %.3fs%s",
        expiry.deleted,
        days,
        expiry.seconds,
        expiry.batches,
        expiry.longest_batch_seconds,
        "" if expiry.done else "; more left for the next run",
    )
    return expiry
