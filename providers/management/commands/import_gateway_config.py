"""`manage.py import_gateway_config FILE.yaml`: upsert providers, models, tiers and routing rules from a YAML file."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from aigateway.audit import audit_command
from providers.config_import import ConfigImportError, gateway_config_import

HELP = """Create or update providers, models (with their deployments and routing), tiers and routing
rules from a YAML file.

Rows are matched by name and the import can be repeated. The file is validated completely first;
on any problem nothing is written. For every model listed in the file, its deployments become
exactly those listed: deployments are upserted by (provider, upstream_model) and the model's other
deployments are deleted. Keys omitted for a listed row take their defaults (an omitted tier limit
means unlimited), except a provider's API key, which is kept unless `api_key` or `api_key_env`
is given. Rows the file does not mention are left alone, routing rules included: a rule dropped from
the file stays until it is deleted in admin or listed with `enabled: false`.
"""


class Command(BaseCommand):
    help = HELP

    def add_arguments(self, parser):
        parser.add_argument("file", help="YAML file with providers, models, tiers and/or routes")

    @audit_command("import_gateway_config")
    def handle(self, *args, **options):
        path = Path(options["file"])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CommandError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise CommandError(f"{path}: is a directory, not a file") from None
        except UnicodeDecodeError:
            raise CommandError(f"{path}: not a UTF-8 text file") from None
        except OSError as exc:
            raise CommandError(f"{path}: cannot read ({exc.strerror})") from None

        try:
            summary = gateway_config_import(data_text=text, source_name=str(path))
        except ConfigImportError as exc:
            raise CommandError("import failed, nothing was changed:\n" + "\n".join(exc.problems)) from None

        self.stdout.write(self.style.SUCCESS(f"Imported {path}"))
        for line in summary.lines():
            self.stdout.write(f"  {line}")
