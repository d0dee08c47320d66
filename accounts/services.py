"""Writes for accounts: issuing, rotating and revoking API keys."""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.keys import key_display_prefix, key_generate, key_hash
from accounts.models import LIMIT_FIELDS, ApiKey, Tier
from aigateway.audit import audit_content_types_fresh, audit_context

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


class KeyRotationError(ValueError):
    """A key that cannot be rotated (disabled, or expired with no new expiry given)."""


@dataclass(frozen=True)
class RotatedKey:
    old_key: ApiKey
    new_key: ApiKey
    plaintext: str


_INHERIT = object()


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Stop a key now, for good: disabled and expired, so enabling it again does not revive it."""
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    now = timezone.now()
    api_key.enabled = False
    if api_key.expires_at is None or api_key.expires_at > now:
        api_key.expires_at = now
    api_key.save(update_fields=["enabled", "expires_at"])
    return api_key


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, grace: timedelta, expires_at=_INHERIT) -> RotatedKey:
    """Issue a successor and let the old key run out.

    The new key is a new row with the old one's owner, team, tier, name, limit overrides, response cache TTL and
    request log setting, and its expiry unless `expires_at` is given (rotating does not extend a key's life). The
    old key keeps working for `grace` (never longer than it would have anyway); a grace of zero revokes it now."""
    old = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    now = timezone.now()
    if not old.enabled:
        raise KeyRotationError(f"key {old.prefix}... ({old.name}) is disabled; enable it first or issue a new key")
    new_expiry = old.expires_at if expires_at is _INHERIT else expires_at
    if new_expiry is not None and new_expiry <= now:
        raise KeyRotationError(f"key {old.prefix}... ({old.name}) has expired; give the new key an expiry")
    issued = api_key_issue(
        owner=old.owner,
        tier=old.tier,
        name=old.name,
        expires_at=new_expiry,
        playground=old.playground,
        team=old.team,
        cache_ttl_seconds=old.cache_ttl_seconds,
        log_bodies=old.log_bodies,
        resumable_streams=old.resumable_streams,
        **{field: getattr(old, field) for field in LIMIT_FIELDS},
    )
    if grace <= timedelta(0):
        old = api_key_revoke(api_key=old)
    else:
        until = now + grace
        if old.expires_at is None or old.expires_at > until:
            old.expires_at = until
            old.save(update_fields=["expires_at"])
    return RotatedKey(old_key=old, new_key=issued.api_key, plaintext=issued.plaintext)


def rotation_grace_default() -> timedelta:
    return timedelta(hours=settings.GATEWAY_KEY_ROTATION_GRACE_HOURS)


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
    # The audit trail names the user the key is made for.
    audit_content_types_fresh()
    with audit_context(actor=user, via="playground"):
        tier, _ = Tier.objects.get_or_create(name=settings.GATEWAY_PLAYGROUND_TIER, defaults=PLAYGROUND_TIER_DEFAULTS)
        return api_key_issue(owner=user, tier=tier, name=PLAYGROUND_KEY_NAME, playground=True).api_key
