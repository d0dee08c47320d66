"""Shared fixtures: a real Redis server, the upstream simulator, gateway processes."""

pytest_plugins = [
    "tests.support.redis",
    "tests.support.simulator",
    "tests.support.database",
    "tests.support.gateway",
    "tests.support.celery",
    "tests.support.secrets_audit",
    "tests.support.browser",
    "pytester",
]


def pytest_unconfigure(config) -> None:
    """SQLite's WAL files of the session's test database outlive the database file pytest-django drops."""
    from pathlib import Path

    from django.conf import settings

    if not settings.configured or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        return
    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name:
        for suffix in ("-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)
