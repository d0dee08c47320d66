"""Response cache entries for tests: written as the relay stores them (packed, with a TTL) in the cache's real
Redis, and the keys that are left read back."""

import hashlib

from django.conf import settings

from aigateway.redis import redis_sync
from providers.response_cache import CACHE_PREFIX, cache_entry_pack, cache_key


def cache_entries_put(*, scope: str, model: str, count: int, ttl: int = 300) -> list[str]:
    """`count` entries of `model` in `scope`, each under its own fingerprint; their keys."""
    client = redis_sync(settings.GATEWAY_CACHE_REDIS_URL)
    keys = []
    for index in range(count):
        fingerprint = hashlib.sha256(f"{scope}|{model}|{index}".encode()).hexdigest()
        key = cache_key(scope=scope, model=model, fingerprint=fingerprint)
        client.set(key, cache_entry_pack({"cost": "0.001", "model": model}, b"{}"), ex=ttl)
        keys.append(key)
    return keys


def cache_keys_left() -> set[str]:
    """Every response cache key in Redis now."""
    client = redis_sync(settings.GATEWAY_CACHE_REDIS_URL)
    return {key.decode() for key in client.scan_iter(match=CACHE_PREFIX + "*", count=500)}
