"""Key verification for the hot path: plaintext key -> KeyContext, cached in process.

A warm key costs no database query: contexts are cached by key hash for GATEWAY_KEY_CACHE_SECONDS
and the whole cache is dropped when the config version in Redis moves (admin disabled a key,
changed a tier, ...), which every process notices within GATEWAY_CONFIG_CHECK_SECONDS.
A cached key's expiry is checked on every use. Keys are found by their SHA-256 hash, in the cache and
the database, and never compared as plaintext: how long a lookup takes says nothing about a key.
Unknown keys are cached briefly too, and the cache is bounded, so a flood of made-up keys can
neither reach the database on every request nor grow the process without limit.
"""

import time

from django.conf import settings
from django.utils import timezone

from accounts.budgets import budget_ref, budgets_applying
from accounts.context import KeyContext
from accounts.keys import key_hash, key_looks_valid
from accounts.models import LIMIT_FIELDS, ApiKey
from aigateway.config_watch import config_watch
from aigateway.db import db_read

_MISSING = object()
# key hash -> (expires_at_monotonic, KeyContext | None); None caches "unknown key" briefly.
_cache: dict[str, tuple[float, KeyContext | None]] = {}
_NEGATIVE_TTL = 2.0
CACHE_MAX_ENTRIES = 50_000
# key id -> whether the key is still enabled (with an active owner), for calls already running on it.
_usable_by_id: dict[int, bool] = {}


def _cache_reset() -> None:
    _cache.clear()
    _usable_by_id.clear()


config_watch.on_change(_cache_reset)


def key_context_build(api_key: ApiKey) -> KeyContext:
    tier = api_key.tier
    limits = {
        name: getattr(api_key, name) if getattr(api_key, name) is not None else getattr(tier, name)
        for name in LIMIT_FIELDS
    }
    allowed = frozenset(m.name for m in tier.allowed_models.all()) or None
    team = api_key.team
    if team is not None:
        # A team's models narrow the tier's (none set = the tier's).
        team_models = frozenset(m.name for m in team.allowed_models.all())
        if team_models:
            allowed = team_models if allowed is None else allowed & team_models
    budgets = budgets_applying(key_id=api_key.id, owner_id=api_key.owner_id, team_id=api_key.team_id)
    return KeyContext(
        key_id=api_key.id,
        key_prefix=api_key.prefix,
        key_name=api_key.name,
        owner_id=api_key.owner_id,
        is_staff=api_key.owner.is_staff,
        tier_name=tier.name,
        max_compare_models=tier.max_compare_models,
        allowed_models=allowed,
        expires_at=api_key.expires_at,
        team_id=api_key.team_id,
        budgets=tuple(budget_ref(budget) for budget in budgets),
        cache_ttl=cache_ttl_for(api_key),
        log_bodies=log_level_for(api_key),
        resumable_streams=resumable_for(api_key),
        **limits,
    )


def log_level_for(api_key: ApiKey) -> str:
    """What the request log keeps of the key's calls: its own setting, else its team's, else its tier's."""
    return api_key.log_bodies or (api_key.team.log_bodies if api_key.team else "") or api_key.tier.log_bodies


def resumable_for(api_key: ApiKey) -> bool:
    """Whether every stream of the key is resumable: its own setting, else its tier's."""
    return api_key.resumable_streams if api_key.resumable_streams is not None else api_key.tier.resumable_streams


def cache_ttl_for(api_key: ApiKey) -> int:
    """The key's response cache TTL in seconds (0 = off): its own setting, else its team's, else its tier's."""
    for setting in (api_key.cache_ttl_seconds, api_key.team.cache_ttl_seconds if api_key.team else None):
        if setting is not None:
            return setting
    return api_key.tier.cache_ttl_seconds


def key_context_load(hashed: str) -> KeyContext | None:
    api_key = (
        ApiKey.objects.select_related("tier", "owner", "team")
        .prefetch_related("tier__allowed_models", "team__allowed_models")
        .filter(key_hash=hashed, enabled=True, owner__is_active=True)
        .first()
    )
    return key_context_build(api_key) if api_key else None


def key_context_for_owner(*, owner_id: int, key_id: int) -> KeyContext | None:
    """The KeyContext of one of a user's own keys (the browser playground pays with it), or None
    when the key is not theirs, disabled or expired. Reads the database: not for the hot path."""
    api_key = (
        ApiKey.objects.select_related("tier", "owner", "team")
        .prefetch_related("tier__allowed_models", "team__allowed_models")
        .filter(pk=key_id, owner_id=owner_id, enabled=True, owner__is_active=True)
        .first()
    )
    return _usable(key_context_build(api_key)) if api_key else None


def _usable(ctx: KeyContext | None) -> KeyContext | None:
    if ctx is not None and ctx.expires_at is not None and ctx.expires_at <= timezone.now():
        return None
    return ctx


def _cached(hashed: str):
    entry = _cache.get(hashed)
    if entry is not None and entry[0] > time.monotonic():
        return entry[1]
    return _MISSING


def _prune() -> None:
    now = time.monotonic()
    for hashed in [h for h, entry in _cache.items() if entry[0] <= now]:
        del _cache[hashed]
    if len(_cache) >= CACHE_MAX_ENTRIES:
        _cache.clear()


def _store(hashed: str, ctx: KeyContext | None) -> None:
    if len(_cache) >= CACHE_MAX_ENTRIES:
        _prune()
    ttl = settings.GATEWAY_KEY_CACHE_SECONDS if ctx is not None else _NEGATIVE_TTL
    _cache[hashed] = (time.monotonic() + ttl, ctx)
    if ctx is not None:
        _usable_by_id[ctx.key_id] = True


async def key_context_resolve(plaintext: str) -> KeyContext | None:
    """The KeyContext of an enabled, unexpired key, or None."""
    if not key_looks_valid(plaintext):
        return None
    await config_watch.check()
    hashed = key_hash(plaintext)
    ctx = _cached(hashed)
    if ctx is _MISSING:
        ctx = await db_read(key_context_load, hashed)
        _store(hashed, ctx)
    return _usable(ctx)


def key_context_resolve_sync(plaintext: str) -> KeyContext | None:
    """Same for sync callers (DRF views); checks the config version synchronously."""
    if not key_looks_valid(plaintext):
        return None
    config_watch.check_sync()
    hashed = key_hash(plaintext)
    ctx = _cached(hashed)
    if ctx is _MISSING:
        ctx = key_context_load(hashed)
        _store(hashed, ctx)
    return _usable(ctx)


def _key_enabled(key_id: int) -> bool:
    return ApiKey.objects.filter(pk=key_id, enabled=True, owner__is_active=True).exists()


async def key_still_usable(ctx: KeyContext) -> bool:
    """Whether a call already running on `ctx` may go on: its key not disabled, deleted or expired since.
    Costs nothing until the config version moves; then one query per key in flight, per process."""
    if _usable(ctx) is None:
        return False
    await config_watch.check()
    usable = _usable_by_id.get(ctx.key_id)
    if usable is None:
        usable = await db_read(_key_enabled, ctx.key_id)
        if len(_usable_by_id) >= CACHE_MAX_ENTRIES:
            _usable_by_id.clear()
        _usable_by_id[ctx.key_id] = usable
    return usable


def key_from_headers(headers) -> str:
    """Our key from `Authorization: Bearer ...` or `x-api-key` (Anthropic SDK style)."""
    auth = headers.get("authorization") or headers.get("Authorization") or ""
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return (headers.get("x-api-key") or headers.get("X-Api-Key") or "").strip()
