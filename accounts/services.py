"""Writes for accounts: issuing and revoking API keys."""

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.keys import key_display_prefix, key_generate, key_hash
from accounts.models import ApiKey, Tier

SERVICE_USERNAME = "gateway-service"


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str


def service_user_get_or_create():
    User = get_user_model()
    user, created = User.objects.get_or_create(username=SERVICE_USERNAME, defaults={"is_active": True})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


@transaction.atomic
def api_key_issue(*, owner, tier: Tier, name: str, **overrides) -> IssuedKey:
    """Create a key; the plaintext exists only in the returned value."""
    plaintext = key_generate()
    api_key = ApiKey.objects.create(
        owner=owner,
        tier=tier,
        name=name,
        key_hash=key_hash(plaintext),
        prefix=key_display_prefix(plaintext),
        **overrides,
    )
    return IssuedKey(api_key=api_key, plaintext=plaintext)


def api_key_set_enabled(*, api_key: ApiKey, enabled: bool) -> None:
    # The post_save signal moves the config version, so every process drops the cached key.
    api_key.enabled = enabled
    api_key.save(update_fields=["enabled"])


PLAYGROUND_KEY_NAME = "playground"
# Used only when the tier named by GATEWAY_PLAYGROUND_TIER does not exist yet.
PLAYGROUND_TIER_DEFAULTS = {"rpm": 60, "max_concurrent": 8, "daily_tokens": 1_000_000, "max_compare_models": 4}


@transaction.atomic
def playground_key_get_or_create(*, user) -> ApiKey:
    """A staff user's own browser-playground key on the GATEWAY_PLAYGROUND_TIER tier.

    Created on first use; like every key only its hash is stored, and the plaintext is thrown away:
    the playground authenticates the browser by its session and never needs it."""
    existing = ApiKey.objects.select_for_update().filter(owner=user, playground=True).first()
    if existing is not None:
        return existing
    tier, _ = Tier.objects.get_or_create(name=settings.GATEWAY_PLAYGROUND_TIER, defaults=PLAYGROUND_TIER_DEFAULTS)
    return api_key_issue(owner=user, tier=tier, name=PLAYGROUND_KEY_NAME, playground=True).api_key
