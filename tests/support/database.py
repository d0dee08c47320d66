"""The test database as other processes and connections see it: the DATABASE_URL a child process (gateway,
Celery worker) needs to share it, a second connection that holds its write lock, on SQLite and on
PostgreSQL alike, and (as a pytest plugin) no connection left open by a test in another thread."""

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from asgiref.sync import SyncToAsync
from django.db import connection, connections


def database_is_sqlite() -> bool:
    return connections["default"].vendor == "sqlite"


def database_url_for_subprocess() -> str:
    """DATABASE_URL pointing a child process at the database this test is using (the test database)."""
    db = connections["default"].settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    if "postgresql" in db["ENGINE"]:
        credentials = quote(db.get("USER") or "", safe="")
        if db.get("PASSWORD"):
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = db.get("HOST") or "localhost"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"
    raise RuntimeError(f"no DATABASE_URL form for {db['ENGINE']}")


def database_locker():
    """A second, autocommit DB-API connection to the test database (not Django's), for holding locks."""
    db = connections["default"].settings_dict
    if database_is_sqlite():
        return sqlite3.connect(db["NAME"], isolation_level=None, timeout=30)
    import psycopg

    return psycopg.connect(
        host=db.get("HOST") or "localhost",
        port=db.get("PORT") or 5432,
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        dbname=db["NAME"],
        autocommit=True,
    )


def database_lock_writes(locker, table: str) -> None:
    """Open a transaction on `locker` that keeps every other connection from writing `table` (reads go on)
    until `locker` commits: SQLite's database-wide write lock, PostgreSQL's EXCLUSIVE table lock."""
    if isinstance(locker, sqlite3.Connection):
        locker.execute("BEGIN EXCLUSIVE")
        return
    from psycopg import sql

    locker.execute("BEGIN")
    locker.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table)))


@contextmanager
def database_lock_wait(seconds: float):
    """Django's connections of this process give up waiting for a lock after `seconds` (SQLite's busy
    timeout, PostgreSQL's lock_timeout) inside the block; the connection (and pool) is renewed around it."""
    options = connection.settings_dict["OPTIONS"]
    previous = dict(options)
    if database_is_sqlite():
        options["timeout"] = seconds
    else:
        options["options"] = f"-c lock_timeout={int(seconds * 1000)}"
    _renew_connection()
    try:
        yield
    finally:
        options.clear()
        options.update(previous)
        _renew_connection()


def _renew_connection() -> None:
    connection.close()
    if connection.vendor == "postgresql":
        # Pooled connections keep the options they were opened with.
        connection.close_pool()


@pytest.fixture(autouse=True)
def database_async_thread_closed(request):
    """Async tests' ORM calls (`acreate`, `aget`) run in asgiref's one shared thread, whose connection
    nothing else closes: close it after each database test, so no test leaves a session open (PostgreSQL
    will not drop a test database that still has one) nor, with the pool, a connection checked out."""
    yield
    if "django_db_setup" in request.fixturenames:
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
