"""Index operations for migrations that build or drop an index without blocking writes on PostgreSQL, and
work unchanged on SQLite.

Django's own `AddIndexConcurrently` and `RemoveIndexConcurrently` (django.contrib.postgres) run only on
PostgreSQL. These run them there, and the plain `AddIndex` / `RemoveIndex` on any other database (SQLite, the
zero-setup default, has no concurrent build and a local file to lock). A migration using them sets
`atomic = False`: CREATE INDEX CONCURRENTLY cannot run inside a transaction.

    from aigateway.migration_operations import AddIndexConcurrently

    class Migration(migrations.Migration):
        atomic = False
        dependencies = [...]
        operations = [
            AddIndexConcurrently("usagerecord", models.Index(fields=["route", "created_at"], name="...")),
        ]

An interrupted concurrent build leaves an INVALID index behind; drop it (`DROP INDEX CONCURRENTLY name`) and
migrate again.
"""

from django.contrib.postgres import operations as postgres
from django.db.migrations.operations import AddIndex, RemoveIndex


def _on_postgresql(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


class AddIndexConcurrently(postgres.AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL, CREATE INDEX elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if _on_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if _on_postgresql(schema_editor):
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class RemoveIndexConcurrently(postgres.RemoveIndexConcurrently):
    """DROP INDEX CONCURRENTLY on PostgreSQL, DROP INDEX elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if _on_postgresql(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        return RemoveIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if _on_postgresql(schema_editor):
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        return RemoveIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
