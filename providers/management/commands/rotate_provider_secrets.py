"""`manage.py rotate_provider_secrets`: re-encrypt every stored provider secret under the first key."""

from django.core.management.base import BaseCommand, CommandError

from aigateway.audit import audit_command, audit_secrets_rewritten
from providers.models import Provider
from providers.secret_rotation import SECRET_COLUMNS, provider_secrets_rotate

HELP = """Re-encrypt every provider's stored secrets (API key, proxy URL, client key) under the first key of
GATEWAY_PROVIDER_SECRET_KEY.

To rotate: set GATEWAY_PROVIDER_SECRET_KEY="NEW,OLD" on every process (the first key encrypts, all
of them decrypt), run this command, then set GATEWAY_PROVIDER_SECRET_KEY="NEW". A secret that no
configured key decrypts is named and left unchanged, and the command exits with an error.
"""


class Command(BaseCommand):
    help = HELP

    @audit_command("rotate_provider_secrets", action="re-encrypt")
    def handle(self, *args, **options):
        result = provider_secrets_rotate()
        # Queryset updates send no signal: the audit trail is told which stored secrets were rewritten.
        for provider in Provider.objects.filter(name__in=result.rotated):
            audit_secrets_rewritten(provider, [column for column in SECRET_COLUMNS if getattr(provider, column)])
        for name in result.rotated:
            self.stdout.write(f"re-encrypted: {name}")
        for name in result.changed_meanwhile:
            self.stdout.write(f"skipped (its key was changed while this ran): {name}")
        self.stdout.write(f"{len(result.rotated)} provider secret(s) re-encrypted under the first key.")
        if result.undecryptable:
            names = ", ".join(result.undecryptable)
            raise CommandError(
                f"{len(result.undecryptable)} provider secret(s) do not decrypt with any key in "
                f"GATEWAY_PROVIDER_SECRET_KEY and were left unchanged: {names}. Add the key they were "
                "stored under to the list, or set their API keys again in admin."
            )
