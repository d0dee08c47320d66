"""Database defaults for the columns earlier migrations added with Python-side defaults only.

With a default in the database, a process that does not know a column (the release still running during a
rolling deploy, or the next one after the column is dropped from the model) can still insert rows. On
PostgreSQL each operation is `ALTER COLUMN ... SET DEFAULT`: a catalogue change, no table rewrite. The ORM
keeps using the Python default when it writes these fields, so nothing else changes.
"""

import providers.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0010_model_unsupported_tools'),
    ]

    operations = [
        migrations.AlterField(
            model_name='model',
            name='alias_order',
            field=models.IntegerField(db_default=0, default=0, help_text='Alias patterns of models with a lower number are tried first (exact names always win).'),
        ),
        migrations.AlterField(
            model_name='model',
            name='aliases',
            field=models.JSONField(blank=True, db_default=[], default=list, help_text='Other names clients may send: exact names or glob patterns, e.g. ["gpt-4o-mini", "claude-*"].'),
        ),
        migrations.AlterField(
            model_name='model',
            name='context_fallbacks',
            field=models.JSONField(blank=True, db_default=[], default=list, help_text="Models to use, in order, when the prompt does not fit this model's context window."),
        ),
        migrations.AlterField(
            model_name='model',
            name='fallbacks',
            field=models.JSONField(blank=True, db_default=[], default=list, help_text='Models to try, in order, when every deployment of this one failed before the first byte.'),
        ),
        migrations.AlterField(
            model_name='model',
            name='kinds',
            field=models.JSONField(blank=True, db_default=['chat'], default=providers.models.model_kinds_default, help_text='What the model is for, shown in /v1/models: any of "chat", "embeddings", "completions".'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='ca_bundle',
            field=models.TextField(blank=True, db_default='', default='', help_text='PEM CA certificates; empty = the system store.'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='client_cert',
            field=models.TextField(blank=True, db_default='', default='', help_text='PEM client certificate (mTLS); optional.'),
        ),
        migrations.AlterField(
            model_name='provider',
            name='client_key_encrypted',
            field=models.TextField(blank=True, db_default='', default='', editable=False),
        ),
        migrations.AlterField(
            model_name='provider',
            name='proxy_url_encrypted',
            field=models.TextField(blank=True, db_default='', default='', editable=False),
        ),
        migrations.AlterField(
            model_name='provider',
            name='request_transforms',
            field=models.JSONField(blank=True, db_default=[], default=list, help_text='Edits to every request sent to this provider, applied in order after translation. Ops: drop, default, force, cap, rename, header. Example: [{"op": "cap", "path": "max_tokens", "max": 8192}, {"op": "drop", "path": "metadata.user_id"}, {"op": "header", "name": "HTTP-Referer", "value": "https://example.com"}]'),
        ),
    ]
