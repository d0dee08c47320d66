"""API key format, hashing and verification, and issuing keys that store only the hash."""

import hashlib

import pytest

from accounts.keys import (
    DISPLAY_PREFIX_LENGTH,
    KEY_PREFIX,
    key_display_prefix,
    key_generate,
    key_hash,
    key_looks_valid,
    key_matches,
)
from accounts.models import ApiKey, Tier
from accounts.services import SERVICE_USERNAME, api_key_issue, api_key_set_enabled, service_user_get_or_create
from aigateway.config_version import CONFIG_VERSION_KEY
from aigateway.redis import redis_sync


def test_generated_keys_have_the_gateway_format_and_are_unique():
    keys = {key_generate() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) >= len(KEY_PREFIX) + 40
        assert key_looks_valid(key)


def test_hash_is_sha256_hex_of_the_plaintext():
    key = key_generate()
    assert key_hash(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(key_hash(key)) == 64
    assert key_hash(key) == key_hash(key)
    assert key_hash(key) != key_hash(key + "x")


def test_matches_only_the_exact_key():
    key = key_generate()
    stored = key_hash(key)
    assert key_matches(key, stored)
    assert not key_matches(key[:-1], stored)
    assert not key_matches(key.upper(), stored)
    assert not key_matches(key_generate(), stored)


def test_display_prefix_is_short_and_reveals_little():
    key = key_generate()
    prefix = key_display_prefix(key)
    assert prefix == key[:DISPLAY_PREFIX_LENGTH]
    assert len(prefix) == DISPLAY_PREFIX_LENGTH < len(key) - 32


@pytest.mark.parametrize(
    ("candidate", "valid"),
    [
        ("sk-gw-" + "a" * 14, True),
        ("sk-gw-" + "a" * 13, False),
        ("sk-gw-" + "a" * 122, True),
        ("sk-gw-" + "a" * 123, False),
        ("sk-" + "a" * 30, False),
        ("Bearer sk-gw-" + "a" * 30, False),
        ("", False),
    ],
)
def test_looks_valid_checks_prefix_and_length(candidate, valid):
    assert key_looks_valid(candidate) is valid


@pytest.mark.django_db
def test_issue_stores_only_the_hash_and_prefix():
    tier = Tier.objects.create(name="free")
    issued = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="ci")
    stored = ApiKey.objects.get(pk=issued.api_key.pk)

    assert key_matches(issued.plaintext, stored.key_hash)
    assert stored.prefix == key_display_prefix(issued.plaintext)
    row = ApiKey.objects.filter(pk=stored.pk).values().get()
    assert not any(issued.plaintext in str(value) for value in row.values())
    assert issued.plaintext not in str(stored)
    assert str(stored) == f"ci ({stored.prefix}...)"


@pytest.mark.django_db
def test_issue_passes_limit_overrides_through():
    tier = Tier.objects.create(name="free", rpm=10)
    issued = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="ci", rpm=99, enabled=False)
    stored = ApiKey.objects.get(pk=issued.api_key.pk)
    assert (stored.rpm, stored.enabled) == (99, False)


@pytest.mark.django_db
def test_service_user_is_created_once_without_a_usable_password():
    first = service_user_get_or_create()
    second = service_user_get_or_create()
    assert first.pk == second.pk
    assert first.username == SERVICE_USERNAME
    assert not first.has_usable_password()


@pytest.mark.django_db
def test_set_enabled_saves_and_bumps_the_config_version(django_capture_on_commit_callbacks):
    tier = Tier.objects.create(name="free")
    issued = api_key_issue(owner=service_user_get_or_create(), tier=tier, name="ci")
    before = redis_sync().get(CONFIG_VERSION_KEY)
    # The bump runs after the commit, when no process can still read the old row.
    with django_capture_on_commit_callbacks(execute=True):
        api_key_set_enabled(api_key=issued.api_key, enabled=False)
    assert ApiKey.objects.get(pk=issued.api_key.pk).enabled is False
    assert redis_sync().get(CONFIG_VERSION_KEY) not in (None, before)
