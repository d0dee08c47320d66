"""Database defaults for the columns earlier migrations added with Python-side defaults only.

With a default in the database, a process that does not know a column (the release still running during a
rolling deploy, or the next one after the column is dropped from the model) can still insert rows. On
PostgreSQL each operation is `ALTER COLUMN ... SET DEFAULT`: a catalogue change, no table rewrite. The ORM
keeps using the Python default when it writes these fields, so nothing else changes.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0008_request_log_search_index'),
    ]

    operations = [
        migrations.AlterField(
            model_name='apikey',
            name='playground',
            field=models.BooleanField(db_default=False, default=False, editable=False, help_text="Created for a staff user's browser playground; never shown."),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='cache_write_tokens',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='cached_tokens',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='reasoning_tokens',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='requested_model',
            field=models.CharField(blank=True, db_default='', default='', max_length=128),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='route',
            field=models.CharField(blank=True, db_default='', default='', max_length=128),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='run_id',
            field=models.CharField(blank=True, db_default='', db_index=True, default='', max_length=64),
        ),
    ]
