"""`manage.py rotate_key <id or prefix>`: issue a successor key, print it once, let the old one run out."""

import argparse
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.management.commands._key_lookup import api_key_find, expires_days
from accounts.services import KeyRotationError, api_key_rotate
from aigateway.audit import audit_command

HELP = """Rotate an API key: a new key with the same owner, tier, name and limits is issued and its
plaintext printed alone on the last line of output (it is not stored and cannot be shown again).
The old key keeps working for the grace period (GATEWAY_KEY_ROTATION_GRACE_HOURS, default 24, or
--grace-hours; 0 revokes it at once), then stops. The new key keeps the old key's expiry unless
--expires-days is given."""


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 <= value <= 24 * 366:
        raise argparse.ArgumentTypeError("must be between 0 and 8784 hours")
    return value


class Command(BaseCommand):
    help = HELP

    def add_arguments(self, parser):
        parser.add_argument("key", help="the key's id or display prefix (sk-gw-...)")
        parser.add_argument("--grace-hours", type=_hours, help="how long the old key keeps working (0 = revoke now)")
        parser.add_argument("--expires-days", type=expires_days, help="the new key expires after this many days")

    @audit_command("rotate_key", action="rotate")
    def handle(self, *args, **options):
        api_key = api_key_find(options["key"])
        hours = options["grace_hours"]
        grace = timedelta(hours=settings.GATEWAY_KEY_ROTATION_GRACE_HOURS if hours is None else hours)
        extra = {}
        if options["expires_days"]:
            extra["expires_at"] = timezone.now() + timedelta(days=options["expires_days"])
        try:
            rotated = api_key_rotate(api_key=api_key, grace=grace, **extra)
        except KeyRotationError as exc:
            raise CommandError(str(exc)) from None
        old, new = rotated.old_key, rotated.new_key
        if old.enabled:
            fate = f"keeps working until {old.expires_at:%Y-%m-%d %H:%M} UTC"
        else:
            fate = "is revoked"
        expiry = f"expires {new.expires_at:%Y-%m-%d %H:%M} UTC" if new.expires_at else "no expiry"
        self.stdout.write(f"Old key {old.prefix}... (id {old.pk}) {fate}.")
        self.stdout.write(
            f"New key '{new.name}' (id {new.pk}, tier {new.tier.name}, owner {new.owner.get_username()}, {expiry})."
        )
        self.stdout.write("Store it now; it cannot be shown again:")
        self.stdout.write(rotated.plaintext)
