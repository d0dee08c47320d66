"""What the key commands share: finding one API key from a command-line argument (its id or its display
prefix), and the `--expires-days` argument type."""

import argparse

from django.core.management.base import CommandError

from accounts.keys import DISPLAY_PREFIX_LENGTH, KEY_PREFIX
from accounts.models import ApiKey

MIN_PREFIX_LENGTH = len(KEY_PREFIX) + 4


def api_key_find(reference: str) -> ApiKey:
    reference = reference.strip()
    if reference.isdigit():
        api_key = ApiKey.objects.select_related("owner", "tier").filter(pk=int(reference)).first()
        if api_key is None:
            raise CommandError(f"no API key with id {reference}")
        return api_key
    if not reference.startswith(KEY_PREFIX) or len(reference) < MIN_PREFIX_LENGTH:
        raise CommandError(
            f"give a key's id or its display prefix (as shown in admin, e.g. {KEY_PREFIX}AbCd1234), "
            f"at least {MIN_PREFIX_LENGTH} characters"
        )
    matches = list(
        ApiKey.objects.select_related("owner", "tier").filter(prefix__startswith=reference[:DISPLAY_PREFIX_LENGTH])
    )
    if not matches:
        raise CommandError(f"no API key with prefix {reference[:DISPLAY_PREFIX_LENGTH]}")
    if len(matches) > 1:
        listed = ", ".join(f"id {k.pk} ({k.name}, {k.prefix}...)" for k in matches)
        raise CommandError(f"prefix {reference[:DISPLAY_PREFIX_LENGTH]} matches several keys: {listed}; give an id")
    return matches[0]


def expires_days(text: str) -> int:
    """argparse type of `--expires-days`: a whole number of days, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 day")
    return value
