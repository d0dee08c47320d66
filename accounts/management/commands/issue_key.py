"""`manage.py issue_key --tier NAME --name LABEL`: issue an API key and print its plaintext once."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.management.commands._key_lookup import expires_days
from accounts.models import ApiKey, Tier
from accounts.services import api_key_issue, service_user_get_or_create


class Command(BaseCommand):
    help = (
        "Issue a new API key. The plaintext key is printed alone on the last line of output; "
        "it is not stored and cannot be shown again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tier", required=True, help="tier name, e.g. free")
        parser.add_argument("--name", required=True, help="label for the key, e.g. the consumer's name")
        parser.add_argument("--user", help="owner's username (default: the built-in service user)")
        parser.add_argument("--expires-days", type=expires_days, help="key expires after this many days")

    def handle(self, *args, **options):
        tier = Tier.objects.filter(name=options["tier"]).first()
        if tier is None:
            known = ", ".join(Tier.objects.values_list("name", flat=True)) or "none defined"
            raise CommandError(f"unknown tier '{options['tier']}' (tiers: {known})")

        if options["user"]:
            User = get_user_model()
            owner = User.objects.filter(**{User.USERNAME_FIELD: options["user"]}).first()
            if owner is None:
                raise CommandError(f"unknown user '{options['user']}'")
        else:
            owner = service_user_get_or_create()

        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be blank")
        if len(name) > ApiKey._meta.get_field("name").max_length:
            raise CommandError(f"--name must be at most {ApiKey._meta.get_field('name').max_length} characters")
        expires_at = None
        if options["expires_days"]:
            expires_at = timezone.now() + timedelta(days=options["expires_days"])

        issued = api_key_issue(owner=owner, tier=tier, name=name, expires_at=expires_at)
        key = issued.api_key
        expiry = f"expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else "no expiry"
        self.stdout.write(
            f"Issued API key '{key.name}' (id {key.pk}, tier {tier.name}, owner {owner.get_username()}, {expiry})."
        )
        self.stdout.write("Store it now; it cannot be shown again:")
        self.stdout.write(issued.plaintext)
