"""PostgreSQL behind PgBouncer in transaction mode (`pool_mode = transaction`), the pooler a large deployment puts
in front of its server: a gateway process and a Celery worker whose DATABASE_URL names PgBouncer, with
GATEWAY_DB_TRANSACTION_POOLING on, serve calls, flush their usage and run the operator's commands (the config
import, issuing a key, the spend export, which reads with `QuerySet.iterator()`).

PgBouncer runs with `server_round_robin = 1`, so consecutive transactions of one client go to different server
connections: what breaks under transaction pooling (a server-side cursor opened in one transaction and read in
the next, a prepared statement) breaks every time, not only under load. The test starts its own PostgreSQL
server (tests/support/postgres.py) whichever database the suite runs on."""

import csv
import io
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from tests.support.celery import CeleryWorkerProcess, broker_url_for
from tests.support.gateway import ROOT, gateway_env
from tests.support.ports import free_port, stop_process, wait_http
from tests.support.postgres import ROLE, SERVER_USER, postgres_server
from tests.support.waiting import eventually

REQUESTS = 12


def pgbouncer_binary() -> str:
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        pytest.fail("pgbouncer is not installed; install it (apt-get install -y pgbouncer, or .ci/test-deps)")
    return binary


@pytest.fixture
def postgres():
    server = postgres_server()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pgbouncer(postgres):
    """PgBouncer in transaction mode in front of `postgres`; yields its DATABASE_URL."""
    folder = postgres.root / "pgbouncer"
    folder.mkdir()
    port = free_port()
    (folder / "userlist.txt").write_text(f'"{ROLE}" "{postgres.password}"\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"gateway = host=127.0.0.1 port={postgres.port} dbname=gateway\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\nserver_round_robin = 1\ndefault_pool_size = 20\nmin_pool_size = 4\n"
        "max_client_conn = 500\n"
    )
    command = [pgbouncer_binary(), str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer will not run as root
        user = pwd.getpwnam(SERVER_USER)
        for path in (folder, *folder.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        command[1:1] = ["-u", SERVER_USER]
    log_path = postgres.root / "pgbouncer.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.05)
        yield f"postgres://{ROLE}:{postgres.password}@127.0.0.1:{port}/gateway"
    finally:
        stop_process(process)


def _manage(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_gateway_and_worker_through_pgbouncer_in_transaction_mode(
    postgres, pgbouncer, redis_server, fresh_simulator, tmp_path
):
    env = gateway_env(
        redis_server,
        DATABASE_URL=pgbouncer,
        GATEWAY_DB_TRANSACTION_POOLING="True",
        GATEWAY_DB_POOL_MAX_SIZE="4",
        GATEWAY_USAGE_FLUSH_SECONDS="0.3",
        GATEWAY_HEALTH_CHECK_SECONDS="3600",
    )
    # Schema changes go to the server directly (a migration may hold a session-level lock or run outside a
    # transaction); everything else through PgBouncer.
    _manage("migrate", "--noinput", env={**env, "DATABASE_URL": postgres.database_url})
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "providers:\n"
        f"  - {{name: sim, dialect: openai, base_url: '{fresh_simulator.openai_base}', api_key: sk-upstream-test}}\n"
        "models:\n"
        "  - {name: sim-fast, deployments: [{provider: sim, upstream_model: 'sim-echo?tokens=6'}]}\n"
        "tiers:\n"
        "  - {name: pooled, rpm: 1000, max_concurrent: 20, models: [sim-fast]}\n"
    )
    _manage("import_gateway_config", str(config), env=env)
    key = _manage("issue_key", "--tier", "pooled", "--name", "through-pgbouncer", env=env).strip().splitlines()[-1]
    assert key.startswith("sk-gw-"), key

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    command = [sys.executable, "manage.py", "run_gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        gateway = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker_env = {**env, "DJANGO_SETTINGS_MODULE": "tests.settings", "CELERY_BROKER_URL": broker_url_for(redis_server)}
    worker = CeleryWorkerProcess(env=worker_env, beat=True, loglevel="info", workdir=tmp_path)
    try:
        wait_http(base + "/health", timeout=30, process=gateway)
        worker.start().wait_ready()
        ids = []
        with httpx.Client(timeout=30) as client:
            for index in range(REQUESTS):
                body = {"model": "sim-fast", "stream": index % 2 == 0, "messages": [{"role": "user", "content": "hi"}]}
                response = client.post(
                    base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert response.status_code == 200, response.text
                ids.append(response.headers["x-request-id"])
            assert client.get(base + "/health?checks=1").json()["checks"]["database"] == "ok"

        def stored() -> tuple[int, int]:
            with psycopg.connect(postgres.database_url) as conn:
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT request_id) FROM accounts_usagerecord WHERE request_id = ANY(%s)",
                    (ids,),
                ).fetchone()
            return row

        eventually(lambda: stored()[0] >= REQUESTS, timeout=30, what="usage flushed through PgBouncer")
        time.sleep(1.0)  # more flushes ran: none wrote a record twice
        assert stored() == (REQUESTS, REQUESTS)

        # The spend export reads with a cursor of its own (`iterator()`): through the pooler it must not
        # leave a server-side cursor behind in one transaction to read it in the next.
        report = _manage("export_spend", "--start", "2000-01-01", "--end", "2100-01-01", env=env)
        rows = list(csv.DictReader(io.StringIO(report)))
        assert sum(int(row["requests"]) for row in rows) == REQUESTS, report
        assert {row["key_name"] for row in rows} == {"through-pgbouncer"}
    finally:
        worker.stop()
        stop_process(gateway)
    for name, text in (("gateway", log_path.read_text(errors="replace")), ("worker", worker.log())):
        assert "Traceback" not in text and "does not exist" not in text, f"{name} log:\n{text[-3000:]}"
