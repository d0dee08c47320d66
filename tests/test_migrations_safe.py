"""Migrations that the release still running tolerates: the migration linter (`make lint-migrations`) passes on
the repository and fails on backward-incompatible migrations, rows written by an older release get the database
defaults of the columns it does not know, and the concurrent index operations work on PostgreSQL and SQLite."""

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from tests.support.postgres import postgres_server

ROOT = Path(__file__).resolve().parent.parent
LINT_SETTINGS = "tests.migration_lint_settings"
RESULT_LINE = re.compile(r"^\((\w+), (\w+)\)\.\.\. (OK|ERR|WARNING)", re.MULTILINE)

PROBE_INITIAL = """
    initial = True
    operations = [
        migrations.CreateModel(
            name="Probe",
            fields=[
                ("id", models.BigAutoField(primary_key=True)),
                ("name", models.CharField(max_length=32, default="", db_default="")),
                ("size", models.IntegerField(null=True)),
            ],
        ),
        migrations.CreateModel(name="Scratch", fields=[("id", models.BigAutoField(primary_key=True))]),
    ]
"""


@pytest.fixture(scope="module")
def postgres_url():
    """An empty PostgreSQL database: the linter asks it for the SQL of each migration and runs none."""
    server = postgres_server()
    try:
        server.start()
        yield server.database_url
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


def write_probe_app(root: Path, migrations: dict[str, str]) -> None:
    """An app `lintprobe` under `root` whose migrations (name -> class body) depend on each other in order, and
    settings modules that add it to the linter's settings (`probe_lint`) and to the test settings (`probe_app`)."""
    folder = root / "lintprobe" / "migrations"
    folder.mkdir(parents=True)
    (folder.parent / "__init__.py").write_text("")
    (folder / "__init__.py").write_text("")
    previous = None
    for name, body in migrations.items():
        dependencies = f"    dependencies = [('lintprobe', '{previous}')]\n" if previous else ""
        source = (
            "from django.db import migrations, models\n\n"
            "import aigateway.migration_operations\n\n\n"
            "class Migration(migrations.Migration):\n"
            + dependencies
            + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
            + "\n"
        )
        (folder / f"{name}.py").write_text(source)
        previous = name
    (root / "probe_lint.py").write_text(
        f"from {LINT_SETTINGS} import *  # noqa: F403\n"
        f"from {LINT_SETTINGS} import INSTALLED_APPS, MIGRATION_LINTER_OPTIONS\n\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "lintprobe"]\n'
        'MIGRATION_LINTER_OPTIONS = {**MIGRATION_LINTER_OPTIONS, "include_apps": ["lintprobe"]}\n'
    )
    (root / "probe_app.py").write_text(
        "from tests.settings import *  # noqa: F403\nfrom tests.settings import INSTALLED_APPS\n\n"
        'INSTALLED_APPS = [*INSTALLED_APPS, "lintprobe"]\n'
    )


def manage(*args: str, settings: str, database_url: str, path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=settings, DATABASE_URL=database_url, DJANGO_DEBUG="True")
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (path, ROOT) if p)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def lint_results(output: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(app, migration) -> (OK | ERR | WARNING, the lines the linter printed under it)."""
    matches = list(RESULT_LINE.finditer(output))
    results = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        details = output[match.end() : following.start() if following else len(output)]
        results[(match[1], match[2])] = (match[3], details)
    return results


def project_migrations() -> set[tuple[str, str]]:
    from tests.migration_lint_settings import MIGRATION_LINTER_OPTIONS

    apps = set(MIGRATION_LINTER_OPTIONS["include_apps"])
    return {key for key in MigrationLoader(None, ignore_no_migrations=True).disk_migrations if key[0] in apps}


# The linter ---------------------------------------------------------------------------------------------------


def test_the_linter_passes_on_the_repository_and_lints_every_migration_outside_the_baseline(postgres_url):
    from tests.migration_lint_settings import MIGRATION_LINT_ACCEPTED

    run = manage("lintmigrations", settings=LINT_SETTINGS, database_url=postgres_url)
    assert run.returncode == 0, run.stdout + run.stderr
    results = lint_results(run.stdout)
    expected = {key for key in project_migrations() if key[1] not in MIGRATION_LINT_ACCEPTED}
    assert set(results) == expected, run.stdout
    assert {outcome for outcome, _ in results.values()} == {"OK"}, run.stdout
    # The migrations of this change are linted, not accepted.
    assert ("accounts", "0009_columns_db_default") in expected
    assert ("providers", "0011_columns_db_default") in expected


def test_each_accepted_name_is_one_existing_migration():
    """The linter matches accepted names without their app: a name must not also stand for a new migration."""
    from tests.migration_lint_settings import MIGRATION_LINT_ACCEPTED

    names = [name for _, name in project_migrations()]
    for name, reason in MIGRATION_LINT_ACCEPTED.items():
        assert names.count(name) == 1, f"{name}: {names.count(name)} migrations have this name"
        assert reason.strip(), f"{name}: say why it is accepted"


def test_the_linter_fails_on_migrations_that_break_the_running_release(postgres_url, tmp_path):
    write_probe_app(
        tmp_path,
        {
            "0001_initial": PROBE_INITIAL,
            "0002_drop_column": 'operations = [migrations.RemoveField("probe", "size")]',
            "0003_rename_column": 'operations = [migrations.RenameField("probe", "name", "title")]',
            "0004_plain_index": (
                'operations = [migrations.AddIndex("probe", models.Index(fields=["title"], name="probe_title"))]'
            ),
            "0005_unique": (
                "operations = [migrations.AddConstraint("
                '"probe", models.UniqueConstraint(fields=["title"], name="probe_title_unique"))]'
            ),
            "0006_drop_table": 'operations = [migrations.DeleteModel("Scratch")]',
            "0007_column_with_db_default": (
                'operations = [migrations.AddField("probe", "count", models.IntegerField(default=0, db_default=0))]'
            ),
            "0008_nullable_column": (
                'operations = [migrations.AddField("probe", "note", models.TextField(null=True))]'
            ),
            "0009_index_concurrently": """
                atomic = False
                operations = [
                    aigateway.migration_operations.AddIndexConcurrently(
                        "probe", models.Index(fields=["count"], name="probe_count")
                    ),
                ]
            """,
        },
    )
    run = manage("lintmigrations", settings="probe_lint", database_url=postgres_url, path=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    results = {name: value for (app, name), value in lint_results(run.stdout).items() if app == "lintprobe"}
    expected_errors = {
        "0002_drop_column": "DROPPING columns",
        "0003_rename_column": "RENAMING columns",
        "0004_plain_index": "CREATE INDEX locks table",
        "0005_unique": "ADDING unique constraint",
        "0006_drop_table": "DROPPING table",
    }
    for name, message in expected_errors.items():
        outcome, details = results[name]
        assert outcome == "ERR" and message in details, f"{name}: {outcome}\n{details}"
    for name in ("0001_initial", "0007_column_with_db_default", "0008_nullable_column", "0009_index_concurrently"):
        assert results[name][0] == "OK", f"{name}: {results[name]}"
    assert f"Erroneous migrations: {len(expected_errors)}/" in run.stdout


def test_a_not_null_column_without_a_database_default_fails_the_lint(postgres_url, tmp_path):
    write_probe_app(
        tmp_path,
        {
            "0001_initial": PROBE_INITIAL,
            "0002_python_default_only": (
                'operations = [migrations.AddField("probe", "count", models.IntegerField(default=0))]'
            ),
            # A later statement with a default of its own: the linter's SQL patterns read this one as safe.
            "0003_then_a_table": """
                operations = [
                    migrations.AddField("probe", "total", models.IntegerField(default=0)),
                    migrations.CreateModel(
                        name="Other", fields=[("id", models.BigAutoField(primary_key=True)),
                                              ("x", models.IntegerField(default=0, db_default=0))],
                    ),
                ]
            """,
            "0004_foreign_key": """
                operations = [
                    migrations.AddField("probe", "other", models.ForeignKey(
                        "lintprobe.other", on_delete=models.CASCADE, default=1)),
                ]
            """,
            "0005_fine": (
                'operations = [migrations.AddField("probe", "n", models.IntegerField(default=0, db_default=0))]'
            ),
        },
    )
    run = manage("lintmigrations", settings="probe_lint", database_url=postgres_url, path=tmp_path)
    assert run.returncode != 0, run.stdout + run.stderr
    flagged = re.findall(r"^lintprobe\.(\w+): \(migrations\.E901\) adds (\w+\.\w+)", run.stderr, re.MULTILINE)
    assert sorted(flagged) == [
        ("0002_python_default_only", "probe.count"),
        ("0003_then_a_table", "probe.total"),
        ("0004_foreign_key", "probe.other"),
    ], run.stderr


def test_the_lint_refuses_to_read_sqlite_sql(tmp_path):
    run = manage("lintmigrations", settings=LINT_SETTINGS, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert run.returncode != 0
    assert "migrations.E900" in run.stderr and "make lint-migrations" in run.stderr


# What the migrations do ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rows_written_by_an_older_release_get_the_database_defaults_of_newer_columns():
    """The models as the first release knew them insert into today's tables: every column added since is
    filled by the database (the ORM's Python-side defaults do not reach SQL the older code sends)."""
    loader = MigrationLoader(connection)
    old = loader.project_state([("accounts", "0001_initial"), ("providers", "0001_initial")]).apps
    user = old.get_model("auth", "User").objects.create(username="old-release")
    tier = old.get_model("accounts", "Tier").objects.create(name="old-tier")
    old.get_model("accounts", "ApiKey").objects.create(
        name="old", key_hash="0" * 64, prefix="sk-gw-old", owner=user, tier=tier
    )
    old.get_model("accounts", "UsageRecord").objects.create(
        request_id="old-release-1", model="sim-fast", endpoint="chat", status_code=200, created_at=timezone.now()
    )
    old.get_model("providers", "Provider").objects.create(name="old-provider", base_url="http://127.0.0.1:9/v1")
    old.get_model("providers", "Model").objects.create(name="old-model")

    from accounts.models import ApiKey, UsageRecord
    from providers.models import Model, Provider

    assert ApiKey.objects.get(name="old").playground is False
    record = UsageRecord.objects.get(request_id="old-release-1")
    assert (record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens) == (0, 0, 0)
    assert (record.requested_model, record.route, record.run_id) == ("", "", "")
    assert record.cache_hit is False and record.cost_saved == 0
    provider = Provider.objects.get(name="old-provider")
    assert provider.request_transforms == []
    assert (provider.ca_bundle, provider.client_cert, provider.client_key_encrypted, provider.proxy_url_encrypted) == (
        "",
        "",
        "",
        "",
    )
    model = Model.objects.get(name="old-model")
    assert (model.kinds, model.aliases, model.fallbacks, model.context_fallbacks) == (["chat"], [], [], [])
    assert model.alias_order == 0 and model.unsupported_tools == "drop"


INDEXED_PROBE = {
    "0001_initial": PROBE_INITIAL,
    "0002_index_concurrently": """
        atomic = False
        operations = [
            aigateway.migration_operations.AddIndexConcurrently(
                "probe", models.Index(fields=["name"], name="probe_name_idx")
            ),
        ]
    """,
    "0003_drop_index_concurrently": """
        atomic = False
        operations = [aigateway.migration_operations.RemoveIndexConcurrently("probe", "probe_name_idx")]
    """,
}


def test_concurrent_index_operations_run_concurrently_on_postgresql(postgres_url, tmp_path):
    import psycopg

    write_probe_app(tmp_path, INDEXED_PROBE)

    def indexes() -> set[str]:
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'lintprobe_probe'").fetchall()
        return {name for (name,) in rows}

    sql = manage("sqlmigrate", "lintprobe", "0002", settings="probe_app", database_url=postgres_url, path=tmp_path)
    assert sql.returncode == 0, sql.stderr
    assert 'CREATE INDEX CONCURRENTLY "probe_name_idx"' in sql.stdout and "BEGIN" not in sql.stdout
    steps = [("0002", True), ("0003", False), ("0002", True), ("0001", False)]
    try:
        for target, present in steps:
            run = manage("migrate", "lintprobe", target, settings="probe_app", database_url=postgres_url, path=tmp_path)
            assert run.returncode == 0, run.stdout + run.stderr
            assert ("probe_name_idx" in indexes()) is present, target
    finally:
        manage("migrate", "lintprobe", "zero", settings="probe_app", database_url=postgres_url, path=tmp_path)


def test_concurrent_index_operations_build_a_plain_index_on_sqlite(tmp_path):
    write_probe_app(tmp_path, INDEXED_PROBE)
    database = tmp_path / "probe.sqlite3"

    def indexes() -> set[str]:
        with sqlite3.connect(database) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'lintprobe_probe'")
            return {name for (name,) in rows}

    for target, present in [("0002", True), ("0003", False), ("0002", True), ("0001", False)]:
        run = manage("migrate", "lintprobe", target, settings="probe_app", database_url=f"sqlite:///{database}",
                     path=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert ("probe_name_idx" in indexes()) is present, target
