"""A trigram index for the request log viewer's text search, on PostgreSQL only (SQLite searches without one).

The viewer searches with `search_text__icontains`, which Django writes on PostgreSQL as
`UPPER(search_text::text) LIKE UPPER('%words%')`: a GIN index of pg_trgm trigrams over that same expression serves
it, so a search reads the matching rows instead of every record's text. The index is built with
CREATE INDEX CONCURRENTLY (outside a transaction: `atomic = False`), so migrating a large table does not stop the
usage flush from writing to it.

pg_trgm ships with PostgreSQL (the contrib package) and is a trusted extension: the database's owner may create it.
When the migration's role may not, it says so and goes on without the index (searches still work, reading every
row); create the extension as a superuser (`CREATE EXTENSION pg_trgm;` in the gateway's database) and run
`manage.py migrate accounts 0007 && manage.py migrate` to add the index later.
"""

import logging

from django.db import DatabaseError, migrations

logger = logging.getLogger("accounts.migrations")

INDEX = "accounts_requestlog_search_trgm"
TABLE = "accounts_requestlog"


def _index_state(cursor) -> bool | None:
    """True: the index exists and is valid; False: exists but invalid (an interrupted concurrent build); None."""
    cursor.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = to_regnamespace(current_schema())",
        [INDEX],
    )
    row = cursor.fetchone()
    return None if row is None else row[0]


def search_index_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        if cursor.fetchone() is None:
            try:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            except DatabaseError as exc:
                logger.warning(
                    "the request log's search index was not created: the extension pg_trgm is missing and this "
                    "role may not create it (%s). Searches work without it but read every record; see "
                    "accounts/migrations/0008_request_log_search_index.py.",
                    str(exc).strip().splitlines()[0],
                )
                return
        state = _index_state(cursor)
        if state is False:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        if state is not True:
            cursor.execute(f"CREATE INDEX CONCURRENTLY {INDEX} ON {TABLE} USING gin (UPPER(search_text) gin_trgm_ops)")


def search_index_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("accounts", "0007_request_log"),
    ]

    operations = [
        migrations.RunPython(search_index_create, search_index_drop, elidable=False),
    ]
