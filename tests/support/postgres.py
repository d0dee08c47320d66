"""A private, throw-away PostgreSQL server for one test run: `make test-postgres` runs the whole suite
against it with `python -m tests.support.postgres -- pytest ...`.

The server lives in a temporary folder, listens on 127.0.0.1 (a free port) and on a unix socket inside
that folder, and is stopped and deleted when the command ends, fails or is interrupted. PostgreSQL
refuses to run as root: under root, initdb and pg_ctl run as the `postgres` user.
"""

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port

ROLE = "gateway"
DATABASE = "gateway"
SUPERUSER = "postgres"
SERVER_USER = "postgres"  # the OS user that runs the server when we are root


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def postgres_bindir() -> Path:
    """Folder of initdb/pg_ctl: $PG_BINDIR, else the newest Debian-style /usr/lib/postgresql/<major>/bin,
    else whatever is on PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install the postgresql package")


@dataclass
class PostgresServer:
    root: Path
    port: int
    password: str
    bindir: Path

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def database_url(self) -> str:
        return f"postgres://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _as_server_user(self, command: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVER_USER, "--", *command]
        return command

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(
            self._as_server_user(command), cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}")

    def start(self, *, durable: bool = False) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "-E", "UTF8",
                   "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])  # fmt: skip
        # Durability off unless asked (benchmarks of writes): the data is thrown away after the run anyway.
        # Enough connections for the test process, the gateways and workers it starts, each with its own pool.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run([str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.datadir),
                   "-l", str(self.root / "server.log"), "-o", options])  # fmt: skip
        self._create_role_and_database()

    def _create_role_and_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE)))

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        pg_ctl = str(self.bindir / "pg_ctl")
        try:
            self._run([pg_ctl, "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.datadir)])
        except RuntimeError as exc:
            print(f"stopping PostgreSQL: {exc}", file=sys.stderr)
            self._run([pg_ctl, "stop", "-w", "-m", "immediate", "-D", str(self.datadir)])

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def postgres_server() -> PostgresServer:
    """A new server, not started, in its own temporary folder (owned by the server's user under root)."""
    root = Path(tempfile.mkdtemp(prefix="gw-postgres-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    return PostgresServer(root=root, port=free_port(), password=secrets.token_urlsafe(16), bindir=postgres_bindir())


def _end_child(child: subprocess.Popen, *, interrupted_too: bool) -> None:
    """Let the command clean up after an interruption (pytest stops its gateways and workers on SIGINT),
    then make sure it is gone."""
    if child.poll() is not None:
        return
    if not interrupted_too:
        child.send_signal(signal.SIGINT)
    try:
        child.wait(60)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C does not wait
        child.kill()
        child.wait()


def run_with_postgres(command: list[str]) -> int:
    """Start a server, run `command` with DATABASE_URL pointing at it, stop and delete the server; returns
    the command's exit status."""
    server = postgres_server()
    child: subprocess.Popen | None = None
    signalled: list[int] = []

    def on_signal(signum, frame) -> None:
        signalled.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
        print(f"PostgreSQL {server.bindir.parent.name} on 127.0.0.1:{server.port} ({server.root})", flush=True)
        child = subprocess.Popen(command, env=dict(os.environ, DATABASE_URL=server.database_url))
        return child.wait()
    except KeyboardInterrupt:
        if child is not None:
            # Ctrl-C at a terminal reaches the command too (same process group); SIGTERM reaches only us.
            _end_child(child, interrupted_too=signalled[-1:] == [signal.SIGINT])
        return 128 + (signalled[-1] if signalled else signal.SIGINT)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        print(server.log()[-4000:], file=sys.stderr)
        return 1
    finally:
        # Nothing interrupts the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            server.stop()
        finally:
            shutil.rmtree(server.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print("usage: python -m tests.support.postgres -- <command...>", file=sys.stderr)
        return 2
    return run_with_postgres(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
