"""System checks run with `manage.py lintmigrations` (tests/migration_lint_settings.py installs them): the
linter is given PostgreSQL's SQL, and every column a new migration adds is nullable or has a database default.

The linter reads SQL with patterns, and one of them misses a NOT NULL column whose default Django drops again
when a later statement of the same migration sets a default of its own (a second column, a new table with a
db_default). This check reads the migration's operations instead: an `AddField` of a NOT NULL column with no
`db_default` breaks every insert of the release still running until it is replaced, whatever else the
migration does.
"""

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import AddField
from django.db.models import NOT_PROVIDED


def lints_postgresql_sql(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if connection.vendor == "postgresql":
        return []
    return [
        checks.Error(
            f"the migration linter reads the SQL PostgreSQL would run, and the database is {connection.vendor}: on "
            "SQLite nearly every change rebuilds its table, which reads as dropping it",
            hint="run `make lint-migrations` (a private PostgreSQL server), or set DATABASE_URL to a PostgreSQL "
            "database",
            id="migrations.E900",
        )
    ]


def new_columns_have_database_defaults(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    options = settings.MIGRATION_LINTER_OPTIONS
    apps, accepted = set(options["include_apps"]), set(options["ignore_name"])
    loader = MigrationLoader(None, ignore_no_migrations=True)  # the files only: no database needed
    errors = []
    for (app_label, name), migration in sorted(loader.disk_migrations.items()):
        if app_label not in apps or name in accepted:
            continue
        for operation in migration.operations:
            if not isinstance(operation, AddField):
                continue
            field = operation.field
            if field.many_to_many or field.null or field.db_default is not NOT_PROVIDED:
                continue
            errors.append(
                checks.Error(
                    f"adds {operation.model_name_lower}.{operation.name}, NOT NULL without a database default: "
                    "inserts by the release still running leave it out and fail",
                    hint="give the field db_default= (as well as default=), or null=True",
                    obj=f"{app_label}.{name}",
                    id="migrations.E901",
                )
            )
    return errors


class MigrationChecksConfig(AppConfig):
    name = "tests.migration_checks"
    label = "migration_checks"
    verbose_name = "Migration checks"

    def ready(self) -> None:
        checks.register(lints_postgresql_sql)
        checks.register(new_columns_have_database_defaults)
