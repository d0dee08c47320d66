"""The response cache's store against the real test Redis: keys per scope and model, the entry size limit,
damaged entries, and purges that delete exactly what they name."""

import asyncio

import pytest

from aigateway.redis import redis_sync
from providers.response_cache import (
    cache_entry_count,
    cache_entry_pack,
    cache_entry_unpack,
    cache_key,
    cache_purge,
    cache_put,
    cache_scope,
)

FINGERPRINT = "f" * 64


def _put(scope: str, model: str, fingerprint: str = FINGERPRINT) -> str:
    key = cache_key(scope=scope, model=model, fingerprint=fingerprint)
    asyncio.run(cache_put(key, b"entry", ttl=60))
    return key


def _left() -> set[str]:
    return {key.decode() for key in redis_sync().scan_iter(match="gw:cache:*")}


def test_scopes_are_the_team_else_the_owner():
    assert cache_scope(team_id=3, owner_id=9) == "team:3"
    assert cache_scope(team_id=None, owner_id=9) == "user:9"


def test_an_entry_is_stored_with_its_ttl():
    key = _put("team:1", "gpt")
    assert 55 <= redis_sync().ttl(key) <= 60


def test_an_entry_reads_back_and_one_over_the_limit_is_not_packed(settings):
    packed = cache_entry_pack({"cost": "0.1"}, b'{"events": []}')
    assert cache_entry_unpack(packed) == ({"cost": "0.1"}, b'{"events": []}')
    settings.GATEWAY_CACHE_MAX_BYTES = 64
    assert cache_entry_pack({"cost": "0.1"}, bytes(range(256)) * 4) is None


@pytest.mark.parametrize("packed", [b"", b"not compressed", __import__("zlib").compress(b"[1]\nx")])
def test_a_damaged_entry_reads_as_none(packed):
    assert cache_entry_unpack(packed) is None


def test_purging_a_model_spares_models_whose_names_contain_it():
    # Colons are legal in model names (`llama3:8b`); a pattern's `*` could span them.
    keep = {_put("team:1", "llama3:8b"), _put("team:1", "x:llama3"), _put("user:2", "llama3-big")}
    gone = {_put("team:1", "llama3"), _put("user:2", "llama3", "e" * 64)}
    assert cache_purge(model="llama3") == 2
    assert _left() == keep
    assert not gone & _left()


def test_purging_a_scope_or_everything():
    _put("team:1", "gpt")
    _put("team:1", "claude")
    other = _put("team:12", "gpt")
    user = _put("user:1", "gpt")
    assert cache_entry_count(scope="team:1") == 2
    assert cache_purge(scope="team:1") == 2
    assert _left() == {other, user}
    assert cache_purge(scope="team:12", model="claude") == 0
    assert cache_purge() == 2 and _left() == set()


def test_purging_matches_scope_names_literally():
    _put("team:1", "gpt")
    assert cache_purge(scope="team:[1]") == 0 and cache_purge(scope="team:*") == 0
    assert cache_entry_count() == 1
