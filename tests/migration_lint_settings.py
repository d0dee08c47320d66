"""Settings for `manage.py lintmigrations` (django-migration-linter, a development dependency): the project's
own settings, plus the linter's app and its options.

The linter reads the SQL each migration would run and fails on what breaks the release still running during a
rolling deploy: a NOT NULL column without a database default (old code's inserts leave it out), a dropped or
renamed column or table, a column type change, a unique constraint on an existing table; and, with warnings
counted as errors, an index built on an existing table without CONCURRENTLY (it blocks writes while it builds).
It lints the SQL of PostgreSQL, the production database: on SQLite nearly every change rebuilds the table, which
reads as dropping it. `make lint-migrations` runs it against a private, empty PostgreSQL server (nothing is
migrated there; the linter only asks for the SQL):

    python -m tests.support.postgres -- env DJANGO_SETTINGS_MODULE=tests.migration_lint_settings \
        python manage.py lintmigrations

docs/kubernetes.md ("Migrations during a rolling deploy") says how to write migrations that pass.
"""

import os

os.environ.setdefault("DJANGO_DEBUG", "True")

from tests.settings import *  # noqa: E402, F403
from tests.settings import BASE_DIR, INSTALLED_APPS  # noqa: E402

# The linter, and the system checks it runs first: the database is PostgreSQL, and every column a new
# migration adds is nullable or has a database default (tests/migration_checks.py says why the linter alone
# does not catch them all).
INSTALLED_APPS = [*INSTALLED_APPS, "django_migration_linter", "tests.migration_checks.MigrationChecksConfig"]

# The baseline: migrations released before the linter ran, accepted as they are (a migration applied in
# production keeps its effect; editing it now would only make the files lie about the databases). Each says
# what the linter finds in it and what has been done about it since. The linter matches names without the
# app label; tests/test_migrations_safe.py checks that each name is one migration. A migration added later
# goes here only after review, with the reason it is safe.
MIGRATION_LINT_ACCEPTED = {
    "0002_playground_key_and_run_id": (
        "accounts: NOT NULL columns apikey.playground and usagerecord.run_id with Python-side defaults only "
        "(database defaults since accounts 0009); run_id's index built inside the migration's transaction"
    ),
    "0003_usage_cached_tokens": "accounts: NOT NULL usagerecord.cached_tokens (database default since 0009)",
    "0004_usage_route": "accounts: NOT NULL usagerecord.requested_model and route (database defaults since 0009)",
    "0005_teams_budgets": (
        "accounts: NOT NULL usagerecord.cache_write_tokens and reasoning_tokens (database defaults since 0009); "
        "the (team, created_at) and (user, created_at) indexes on usage records built without CONCURRENTLY"
    ),
    "0003_provider_request_transforms": (
        "providers: NOT NULL provider.request_transforms (database default since providers 0011)"
    ),
    "0004_routing_aliases_fallbacks_rules": (
        "providers: NOT NULL model.alias_order, aliases, fallbacks, context_fallbacks (database defaults since "
        "providers 0011; the linter's SQL patterns miss these, tests/migration_checks.py does not)"
    ),
    "0006_model_kinds": "providers: NOT NULL model.kinds (database default since providers 0011)",
    "0009_egress_tls_timeouts": (
        "providers: NOT NULL provider.ca_bundle, client_cert, client_key_encrypted, proxy_url_encrypted "
        "(database defaults since providers 0011)"
    ),
}

MIGRATION_LINTER_OPTIONS = {
    # The project's own apps; third-party apps' migrations are their maintainers' business.
    "include_apps": [app for app in INSTALLED_APPS if (BASE_DIR / app).is_dir()],
    "ignore_name": sorted(MIGRATION_LINT_ACCEPTED),
    "sql_analyser": "postgresql",
    # An empty list: every warning is an error (index builds that lock a table, irreversible data migrations).
    "warnings_as_errors": [],
    # Only the migrations it lints are listed (third-party apps' and the accepted ones are not).
    "quiet": ["ignore"],
    # The cache would live outside the repository (the user's cache folder); a run takes a second or two.
    "no_cache": True,
}
