"""`manage.py revoke_key <id or prefix>`: stop an API key now, for good."""

from django.core.management.base import BaseCommand

from accounts.management.commands._key_lookup import api_key_find
from accounts.services import api_key_revoke
from aigateway.audit import audit_command


class Command(BaseCommand):
    help = (
        "Revoke an API key: it is disabled and expired at once (every gateway process drops it within "
        "GATEWAY_CONFIG_CHECK_SECONDS), and enabling it again in admin does not bring it back."
    )

    def add_arguments(self, parser):
        parser.add_argument("key", help="the key's id or display prefix (sk-gw-...)")

    @audit_command("revoke_key", action="revoke")
    def handle(self, *args, **options):
        api_key = api_key_revoke(api_key=api_key_find(options["key"]))
        self.stdout.write(f"Revoked API key {api_key.prefix}... (id {api_key.pk}, {api_key.name}).")
