"""The response cache's store: complete answers in Redis, under `gw:cache:<scope>:<model>:<fingerprint>`, each
with its TTL, compressed, never larger than GATEWAY_CACHE_MAX_BYTES.

A scope is whom an entry belongs to: a team (`team:<id>`) or, for a key without one, its owner (`user:<id>`);
two scopes never share an entry. Entries live in GATEWAY_CACHE_REDIS_URL's Redis when set (give it `maxmemory`
and `maxmemory-policy allkeys-lru`, and Redis evicts the least recently used answers itself), else in the
gateway's. What an entry holds is the relay's business (providers.dialects.replay); this module stores bytes.
"""

import zlib

import orjson
from django.conf import settings

from aigateway.redis import redis_async, redis_sync

CACHE_PREFIX = "gw:cache:"
# Keys deleted per round trip when purging.
_PURGE_BATCH = 500


def cache_scope(*, team_id: int | None, owner_id: int) -> str:
    return f"team:{team_id}" if team_id is not None else f"user:{owner_id}"


def cache_key(*, scope: str, model: str, fingerprint: str) -> str:
    return f"{CACHE_PREFIX}{scope}:{model}:{fingerprint}"


def cache_entry_pack(meta: dict, answer: bytes) -> bytes | None:
    """An entry as stored: `meta` (JSON) and the encoded answer, compressed; None when it is larger than
    GATEWAY_CACHE_MAX_BYTES (such an answer is not kept)."""
    packed = zlib.compress(orjson.dumps(meta) + b"\n" + answer, 1)
    return packed if len(packed) <= settings.GATEWAY_CACHE_MAX_BYTES else None


def cache_entry_unpack(packed: bytes) -> tuple[dict, bytes] | None:
    """(meta, encoded answer) of a stored entry, or None when it cannot be read."""
    try:
        raw = zlib.decompress(packed)
        head, _, answer = raw.partition(b"\n")
        meta = orjson.loads(head)
    except (zlib.error, orjson.JSONDecodeError):
        return None
    return (meta, answer) if isinstance(meta, dict) else None


def _client_async():
    return redis_async(settings.GATEWAY_CACHE_REDIS_URL)


def _client_sync():
    return redis_sync(settings.GATEWAY_CACHE_REDIS_URL)


async def cache_get(key: str) -> bytes | None:
    return await _client_async().get(key)


async def cache_put(key: str, packed: bytes, *, ttl: int) -> None:
    await _client_async().set(key, packed, ex=ttl)


def _glob_escaped(text: str) -> str:
    """`text` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def cache_purge(*, model: str | None = None, scope: str | None = None) -> int:
    """Delete the cached answers of a model, of a scope, of both, or (neither given) every one; the number
    deleted. SCAN in batches, so Redis is never blocked for long (an admin action, not the hot path)."""
    pattern = CACHE_PREFIX + (_glob_escaped(scope) if scope else "*") + ":"
    pattern += (_glob_escaped(model) + ":*") if model else "*"
    client = _client_sync()
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=_PURGE_BATCH):
        if model and _model_of(key) != model:
            continue  # a pattern's `*` may span colons: the key names another model that ends alike
        batch.append(key)
        if len(batch) >= _PURGE_BATCH:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def _model_of(key: bytes) -> str:
    """The model an entry's key names: what lies between its scope (`kind:id`, no other colon) and its
    64-character fingerprint (a model name may hold colons)."""
    rest = key.decode(errors="replace")[len(CACHE_PREFIX) :]
    _kind, _, rest = rest.partition(":")
    _scope_id, _, rest = rest.partition(":")
    return rest[:-65]


def cache_entry_count(*, scope: str | None = None) -> int:
    """How many answers are cached (in a scope, or in all): counted with SCAN, for admin pages."""
    pattern = CACHE_PREFIX + (_glob_escaped(scope) + ":*" if scope else "*")
    return sum(1 for _ in _client_sync().scan_iter(match=pattern, count=_PURGE_BATCH))
