"""The deployment files under deploy/ and the guide docs/deploy.md: parsed, cross-checked against the code and
each other, and nginx's configuration run for real in front of a stand-in gateway."""

import configparser
import http.client
import importlib.util
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.support.tls import self_signed_certificate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NGINX_CONF = DEPLOY / "nginx.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
SYSTEMD = DEPLOY / "systemd"
GUIDE = ROOT / "docs" / "deploy.md"

# The metric names the gateway exports, with their labels (histograms also have `le` on _bucket);
# docs/observability.md describes each.
METRICS = {
    "gateway_requests_total": {"model", "provider", "endpoint", "status"},
    "gateway_request_duration_seconds": {"model", "provider"},
    "gateway_time_to_first_byte_seconds": {"model", "provider"},
    "gateway_tokens_total": {"model", "kind"},
    "gateway_upstream_errors_total": {"provider", "kind"},
    "gateway_streams_in_flight": set(),
    "gateway_usage_queue_depth": set(),
    "gateway_provider_up": {"provider"},
    "gateway_breaker_open": {"provider", "model"},
}
HISTOGRAMS = {"gateway_request_duration_seconds", "gateway_time_to_first_byte_seconds"}
SCRAPE_LABELS = {"instance", "job"}

# What every container running the gateway's image needs to reach its stores and decrypt provider keys.
REQUIRED_APP_ENV = {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "GATEWAY_PROVIDER_SECRET_KEY"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def app_services(spec: dict) -> dict:
    """Services that run the gateway's own image (built from deploy/Dockerfile)."""
    return {
        name: svc
        for name, svc in spec["services"].items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def command_of(svc: dict) -> str:
    command = svc.get("command")
    if command is None:
        return default_cmd()
    return " ".join(command) if isinstance(command, list) else command


def default_cmd() -> str:
    cmd = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")][-1]
    return " ".join(json.loads(cmd.removeprefix("CMD ")))


def gateway_services(spec: dict) -> dict:
    return {name: svc for name, svc in app_services(spec).items() if "run_gateway" in command_of(svc)}


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(value))
    assert match, f"unreadable duration {value!r}"
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


# Compose ----------------------------------------------------------------------------------------------


def test_compose_validates_against_the_compose_specification():
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations, (
        "the Compose Specification schema ships with check-jsonschema (requirements-dev.txt)"
    )
    import jsonschema

    schema_path = Path(spec.submodule_search_locations[0]) / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_dependencies_name_real_services_with_valid_conditions():
    spec = compose()
    services = spec["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for target, rule in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert rule["condition"] in conditions, f"{name} -> {target}: {rule}"
            if rule["condition"] == "service_healthy":
                healthcheck = services[target].get("healthcheck", {})
                assert healthcheck.get("test") and not healthcheck.get("disable"), (
                    f"{name} waits for {target} to be healthy, but {target} has no health check"
                )
            if target in services and services[target].get("profiles") and not svc.get("profiles"):
                pytest.fail(f"{name} (always on) depends on {target}, which only runs under a profile")


def test_compose_runs_two_gateways_standby_beats_a_worker_and_a_one_shot_migration():
    from django.conf import settings

    spec = compose()
    services = spec["services"]
    gateways = gateway_services(spec)
    assert len(gateways) >= 2, f"gateway services: {sorted(gateways)}"
    beats = [name for name, svc in app_services(spec).items() if re.search(r"\bbeat\b", command_of(svc))]
    assert len(beats) == 1, f"one beat service (scaled with replicas), found {beats}"
    # More than one beat is safe only because the schedule and its lock live in Redis (tests/test_beat_e2e.py).
    assert settings.CELERY_BEAT_SCHEDULER == "aigateway.beat.GatewayBeatScheduler"
    assert services[beats[0]].get("deploy", {}).get("replicas", 1) >= 2
    assert "--schedule" not in command_of(services[beats[0]]), "the schedule lives in Redis, not in a file"
    workers = [name for name, svc in app_services(spec).items() if re.search(r"celery .*\bworker\b", command_of(svc))]
    assert workers, "no Celery worker service"

    migrations = [name for name, svc in app_services(spec).items() if "manage.py migrate" in command_of(svc)]
    assert len(migrations) == 1, migrations
    migrate = services[migrations[0]]
    assert "--noinput" in command_of(migrate)
    assert migrate.get("restart") == "no", "a one-shot migration must not be restarted"
    for name in [*gateways, *workers, *beats]:
        rule = (services[name].get("depends_on") or {}).get(migrations[0])
        assert rule == {"condition": "service_completed_successfully"}, f"{name} must start after the migration"


def test_every_app_container_gets_the_settings_it_needs():
    spec = compose()
    for name, svc in app_services(spec).items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        missing = REQUIRED_APP_ENV - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert str(env["DJANGO_DEBUG"]).lower() == "false", f"{name} runs with DEBUG"
        assert env["DATABASE_URL"].startswith("postgres://"), name
        assert env["REDIS_URL"].startswith("redis://"), name
        host = re.match(r"postgres://[^@]+@([^:/]+)", env["DATABASE_URL"])[1]
        assert host in spec["services"], f"{name}: DATABASE_URL names host {host}, not a service"
        redis_host = re.match(r"redis://(?:.*@)?([^:/@]+)", env["REDIS_URL"])[1]
        assert redis_host in spec["services"], f"{name}: REDIS_URL names host {redis_host}, not a service"


def test_gateways_keep_metrics_on_a_fresh_tmpfs_and_outlast_their_grace_period():
    spec = compose()
    for name, svc in gateway_services(spec).items():
        env = svc["environment"]
        folder = env.get("PROMETHEUS_MULTIPROC_DIR")
        assert folder, f"{name}: PROMETHEUS_MULTIPROC_DIR unset"
        mounts = [entry.split(":")[0] for entry in svc.get("tmpfs", [])]
        assert any(folder == m or folder.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{name}: {folder} is not on a tmpfs {mounts}"
        )
        grace = float(env.get("GATEWAY_SHUTDOWN_GRACE_SECONDS", 600))
        drain = float(env.get("GATEWAY_DRAIN_SECONDS", 0))
        # Long streams (coding agents, reasoning models) run for minutes: a grace period of ten at least.
        assert grace >= 600 and drain > 0, (name, grace, drain)
        assert seconds(svc.get("stop_grace_period", "10s")) > drain + grace + 5, (
            f"{name}: Docker would kill streams still inside the {drain:g}s drain plus {grace:g}s grace period"
        )
        assert svc["healthcheck"]["test"], name


def test_long_running_services_have_health_checks():
    spec = compose()
    for name, svc in spec["services"].items():
        if svc.get("restart") == "no":
            continue
        healthcheck = svc.get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), f"{name} has no health check"


def test_compose_mounts_exist_and_nginx_gets_its_config():
    spec = compose()
    nginx = spec["services"]["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    for name, svc in spec["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                # certs/ is the operator's own (docs/deploy.md); everything else ships in deploy/.
                if source != "./certs":
                    assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"
            else:
                assert source in spec["volumes"], f"{name} mounts undeclared volume {source}"


def test_nginx_upstreams_and_prometheus_targets_are_the_gateway_services():
    spec = compose()
    gateways = set(gateway_services(spec))
    upstream = set(re.findall(r"^\s*server\s+([\w.-]+):8000\b", NGINX_CONF.read_text(), re.M))
    assert upstream == gateways, f"nginx upstream {upstream} != gateway services {gateways}"
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0] for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == gateways, f"prometheus targets {targets} != gateway services {gateways}"


def test_database_connections_fit_under_postgres_max_connections():
    """Every process holds up to GATEWAY_DB_POOL_MAX_SIZE connections: the sum must fit."""
    spec = compose()
    postgres = spec["services"]["postgres"]
    max_connections = int(re.search(r"max_connections=(\d+)", " ".join(postgres["command"]))[1])
    total = 0
    for svc in app_services(spec).values():
        env = svc["environment"]
        pool = int(env["GATEWAY_DB_POOL_MAX_SIZE"])
        command = command_of(svc)
        if "run_gateway" in command:
            processes = int(env["GATEWAY_WORKERS"])
        elif " worker" in command:
            processes = int(re.search(r"--concurrency[ =](\d+)", command)[1]) + 1
        else:
            processes = 1
        total += processes * pool * svc.get("deploy", {}).get("replicas", 1)
    assert total <= max_connections - 3, f"{total} pooled connections, PostgreSQL allows {max_connections}"


# nginx -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_pair(folder: Path) -> None:
    cert, key = self_signed_certificate()
    (folder / "fullchain.pem").write_bytes(cert)
    (folder / "privkey.pem").write_bytes(key)


def local_nginx_conf(tmp_path: Path, *, upstream_port: int, http_port: int, https_port: int) -> Path:
    """deploy/nginx.conf made runnable here: upstreams on loopback, ports, pid, logs, temp folders and
    certificates under tmp_path. Everything else stays as shipped."""
    self_signed_pair(tmp_path)
    text = NGINX_CONF.read_text()
    text = re.sub(r"server\s+[\w.-]+:8000\b", f"server 127.0.0.1:{upstream_port}", text)
    text = re.sub(r"^\s*listen \[::\]:.*$", "", text, flags=re.M)
    text = text.replace("listen 80 ", f"listen 127.0.0.1:{http_port} ")
    text = text.replace("listen 443 ", f"listen 127.0.0.1:{https_port} ")
    text = text.replace("/etc/nginx/certs", str(tmp_path))
    text = re.sub(r"^pid .*;$", f"pid {tmp_path / 'nginx.pid'};", text, flags=re.M)
    text = re.sub(r"^error_log .*;$", f"error_log {tmp_path / 'error.log'} warn;", text, flags=re.M)
    text = re.sub(r"access_log /dev/stdout;", f"access_log {tmp_path / 'access.log'};", text)
    temp_dirs = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp_dirs, 1)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_binary() -> str:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        pytest.fail("nginx is not installed; install it (apt-get install -y nginx) to test deploy/nginx.conf")
    return binary


def test_nginx_config_passes_nginx_t(tmp_path):
    conf = local_nginx_conf(tmp_path, upstream_port=free_port(), http_port=free_port(), https_port=free_port())
    result = subprocess.run(
        [nginx_binary(), "-t", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "startup.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def location_block(text: str, prefix: str) -> str:
    start = text.index(f"location {prefix} {{")
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            return text[start : i + 1]
    raise AssertionError(f"unclosed location {prefix}")


def test_nginx_api_and_websocket_locations_are_streaming_safe():
    text = NGINX_CONF.read_text()
    api = location_block(text, "/v1/")
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "gzip off;"):
        assert directive in api, f"/v1/ lacks {directive}"
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(re.search(rf"{directive} (\w+);", api)[1]) >= 600, directive
    ws = location_block(text, "/ws/")
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    # proxy_set_header in a location replaces every inherited one: the forwarding headers must be repeated.
    for header in ("Host", "X-Forwarded-For", "X-Forwarded-Proto"):
        assert f"proxy_set_header {header} " in ws, f"/ws/ would drop {header}"
    assert "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text
    assert re.search(r"^\s*keepalive \d+;", text, re.M)

    from django.conf import settings

    limit = re.search(r"client_max_body_size (\d+)([km]?);", text)
    size = int(limit[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[limit[2]]
    assert size == settings.GATEWAY_MAX_BODY_BYTES, f"nginx {size} != GATEWAY_MAX_BODY_BYTES"


class StandInGateway(BaseHTTPRequestHandler):
    """Answers /v1/ with a slow SSE stream (no X-Accel-Buffering: the config alone must stop buffering) and
    /ws/ with a websocket handshake; remembers the headers of each request."""

    protocol_version = "HTTP/1.1"
    seen: list = []
    events = 5
    spacing = 0.3

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append((self.path, dict(self.headers)))
        if self.path.startswith("/ws/"):
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.seen.append((self.path, dict(self.headers)))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(self.events):
            chunk = f"data: event-{i}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
            time.sleep(self.spacing)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture
def nginx_in_front(tmp_path):
    StandInGateway.seen = []
    backend = ThreadingHTTPServer(("127.0.0.1", 0), StandInGateway)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    http_port, https_port = free_port(), free_port()
    conf = local_nginx_conf(
        tmp_path, upstream_port=backend.server_address[1], http_port=http_port, https_port=https_port
    )
    process = subprocess.Popen(
        [
            nginx_binary(),
            "-c",
            str(conf),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "startup.log"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield {"http": http_port, "https": https_port}
    finally:
        process.terminate()
        process.wait(timeout=10)
        backend.shutdown()
        backend.server_close()


def https(port: int) -> http.client.HTTPSConnection:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)


def test_nginx_relays_an_event_stream_event_by_event(nginx_in_front):
    conn = https(nginx_in_front["https"])
    conn.request("POST", "/v1/chat/completions", body=b'{"stream": true}', headers={"Host": "gw.example"})
    started = time.monotonic()
    response = conn.getresponse()
    assert response.status == 200
    arrivals, received = {}, b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        received += chunk
        for i in range(StandInGateway.events):
            if f"event-{i}".encode() in received:
                arrivals.setdefault(i, time.monotonic() - started)
    conn.close()
    assert sorted(arrivals) == list(range(StandInGateway.events))
    # Buffered, every event would arrive together at the end; relayed, they keep the upstream's spacing.
    span = StandInGateway.spacing * (StandInGateway.events - 1)
    assert arrivals[StandInGateway.events - 1] - arrivals[0] > span * 0.7, arrivals

    path, headers = StandInGateway.seen[-1]
    headers = {k.lower(): v for k, v in headers.items()}
    assert path == "/v1/chat/completions"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == "gw.example"
    assert headers.get("connection", "").lower() != "close", "upstream connection not kept alive"


def test_nginx_passes_the_websocket_handshake_with_forwarding_headers(nginx_in_front):
    conn = https(nginx_in_front["https"])
    conn.request(
        "GET",
        "/ws/playground/",
        headers={
            "Host": "gw.example",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    )
    response = conn.getresponse()
    assert response.status == 101
    conn.close()
    path, headers = StandInGateway.seen[-1]
    headers = {k.lower(): v for k, v in headers.items()}
    assert path == "/ws/playground/"
    assert headers["upgrade"] == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["host"] == "gw.example"


def test_nginx_refuses_large_bodies_in_the_clients_dialect_and_hides_metrics(nginx_in_front):
    from django.conf import settings

    too_large = b"x" * (settings.GATEWAY_MAX_BODY_BYTES + 1)
    for path, shape in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")):
        conn = https(nginx_in_front["https"])
        conn.request("POST", path, body=too_large, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
        assert response.status == 413
        assert response.getheader("Content-Type") == "application/json"
        assert body["type"] == "error" if shape == "anthropic" else "type" not in body
        assert "error" in body
    assert not any(path.startswith("/v1/") for path, _ in StandInGateway.seen)

    conn = https(nginx_in_front["https"])
    conn.request("GET", "/metrics")
    assert conn.getresponse().status == 404
    conn.close()

    plain = http.client.HTTPConnection("127.0.0.1", nginx_in_front["http"], timeout=10)
    plain.request("GET", "/admin/", headers={"Host": "gw.example"})
    response = plain.getresponse()
    assert response.status == 301
    assert response.getheader("Location") == "https://gw.example/admin/"
    plain.close()


# Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_is_multi_stage_non_root_with_a_health_check():
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2, "builder and runtime stages"
    final_stage = [i for i, (op, _) in enumerate(instructions) if op == "FROM"][-1]
    tail = instructions[final_stage:]
    users = [args for op, args in tail if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(op == "COPY" and "--from=" in args for op, args in tail), "runtime copies the builder's venv"
    assert not any(op == "RUN" and "build-essential" in args for op, args in tail), "compiler in the runtime image"
    healthcheck = [args for op, args in tail if op == "HEALTHCHECK"]
    assert healthcheck and "/health" in healthcheck[0]
    assert ("EXPOSE", "8000") in tail
    cmd = json.loads([args for op, args in tail if op == "CMD"][-1])
    assert cmd[:3] == ["python", "manage.py", "run_gateway"] and "0.0.0.0" in cmd
    assert (ROOT / cmd[1]).is_file()


def test_dockerfile_copies_files_that_exist_and_every_first_party_app():
    from django.conf import settings

    copied = set()
    for op, args in dockerfile_instructions():
        if op != "COPY" or "--from=" in args:
            continue
        sources = [part for part in args.split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            copied.add(source.strip("/"))
    assert "requirements.txt" in copied and "manage.py" in copied
    first_party = {app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()}
    assert first_party <= copied, f"apps not in the image: {sorted(first_party - copied)}"
    for folder in settings.TEMPLATES[0]["DIRS"]:
        assert Path(folder).relative_to(ROOT).as_posix() in copied


def test_dockerignore_keeps_local_state_out_of_the_context():
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for required in (".git", ".venv", "var", "db.sqlite3*", ".env", "**/__pycache__"):
        assert required in entries, required
    for op, args in dockerfile_instructions():
        if op == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert source.strip("/") not in entries, f"COPY {source} is excluded by .dockerignore"


# systemd ----------------------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def test_systemd_units_have_the_keys_that_make_them_safe_to_stop_and_restart():
    from django.conf import settings

    units = {name: unit(name) for name in ("aigateway.service", "aigateway-worker.service", "aigateway-beat.service")}
    for name, parsed in units.items():
        service = parsed["Service"]
        for key in ("ExecStart", "User", "WorkingDirectory", "EnvironmentFile", "Restart", "KillSignal"):
            assert service.get(key), f"{name}: [Service] {key} missing"
        assert service["Restart"] == "on-failure", name
        assert service["KillSignal"] == "SIGTERM", name
        assert service.get("NoNewPrivileges") == "yes" and service.get("ProtectSystem") == "strict", name
        assert parsed["Install"]["WantedBy"] == "multi-user.target", name
    gateway = units["aigateway.service"]["Service"]
    assert "manage.py run_gateway" in gateway["ExecStart"]
    text = (SYSTEMD / "aigateway.service").read_text()
    drain = float(re.search(r"\bGATEWAY_DRAIN_SECONDS=(\d+)", text)[1])
    grace = float(re.search(r"\bGATEWAY_SHUTDOWN_GRACE_SECONDS=(\d+)", text)[1])
    assert drain > 0 and grace >= settings.GATEWAY_SHUTDOWN_GRACE_SECONDS
    assert seconds(gateway["TimeoutStopSec"] + "s") > drain + grace + 5
    runtime_dirs = gateway["RuntimeDirectory"].split()
    metrics = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", text)[1]
    assert metrics.removeprefix("/run/") in runtime_dirs or metrics.split("/")[2] in runtime_dirs, (
        "PROMETHEUS_MULTIPROC_DIR must live in the RuntimeDirectory, which systemd empties at every start"
    )
    assert "worker" in units["aigateway-worker.service"]["Service"]["ExecStart"]
    assert " beat " in units["aigateway-beat.service"]["Service"]["ExecStart"]
    assert "--schedule" not in units["aigateway-beat.service"]["Service"]["ExecStart"]


def test_systemd_analyze_verifies_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is not installed (apt-get install -y systemd)"
    venv_bin = Path(sys.executable).parent
    for path in SYSTEMD.glob("*.service"):
        text = path.read_text().replace("/opt/aigateway/.venv/bin/python", sys.executable)
        text = text.replace("/opt/aigateway/.venv/bin/celery", str(venv_bin / "celery"))
        text = text.replace("WorkingDirectory=/opt/aigateway", f"WorkingDirectory={ROOT}")
        (tmp_path / path.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    result = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "aigateway" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# Environment variables --------------------------------------------------------------------------------


def known_variables() -> set[str]:
    """Variables the code reads: `env(...)`/`env.int(...)` in settings and os.environ/os.getenv anywhere in the
    project's packages."""
    names = set(
        re.findall(
            r"""\benv(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]*)["']""", (ROOT / "aigateway" / "settings.py").read_text()
        )
    )
    for package in ("aigateway", "accounts", "providers", "streaming"):
        for source in (ROOT / package).rglob("*.py"):
            if "tests" in source.parts:
                continue
            text = source.read_text()
            names |= set(
                re.findall(
                    r"""os\.(?:environ(?:\.get|\.setdefault)?[\[(]|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""", text
                )
            )
            names |= set(re.findall(r"""^[A-Z_]+\s*=\s*["']([A-Z][A-Z0-9_]*)["']\s*$""", text, re.M))
    return names


VARIABLE = re.compile(r"\b((?:DJANGO|GATEWAY|PROMETHEUS|CELERY)_[A-Z0-9_]*[A-Z0-9]_?\*?|DATABASE_URL|REDIS_URL)")


def test_every_variable_named_in_the_deploy_files_and_guide_exists():
    known = known_variables()
    assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR"} <= known
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [GUIDE]
    unknown = {}
    for path in files:
        for name in VARIABLE.findall(path.read_text()):
            if name.endswith(("*", "_")):
                prefix = name.rstrip("*")
                if not any(k.startswith(prefix) for k in known):
                    unknown.setdefault(name, path.relative_to(ROOT).as_posix())
            elif name not in known and name.removesuffix("_FILE") not in known:  # X_FILE: X read from a file
                unknown.setdefault(name, path.relative_to(ROOT).as_posix())
    assert not unknown, f"variables the code never reads: {unknown}"


# Monitoring -------------------------------------------------------------------------------------------


def test_prometheus_config_scrapes_metrics_with_the_bearer_token():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    assert jobs
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        assert job["authorization"]["credentials_file"]
    mounted = {c["target"] for c in compose()["services"]["prometheus"]["configs"]}
    assert {job["authorization"]["credentials_file"] for job in jobs} <= mounted


def test_grafana_dashboard_queries_only_metrics_the_gateway_exports():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["panels"]
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = re.findall(r"\b(gateway_[a-z_]+)", expr)
            assert names, expr
            labels = set()
            for name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base in METRICS, f"{panel['title']}: unknown metric {name}"
                assert base == name or base in HISTOGRAMS, f"{name}: only histograms have {name[len(base) :]}"
                labels |= METRICS[base] | ({"le"} if name.endswith("_bucket") else set())
                queried.add(base)
            used = set(re.findall(r"\b(\w+)\s*=~?", expr)) | {
                label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")
            }
            assert used <= labels | SCRAPE_LABELS, f"{panel['title']}: labels {used - labels - SCRAPE_LABELS}"
            if "histogram_quantile" in expr:
                assert re.search(r"by \([^)]*\ble\b", expr), f"{panel['title']}: quantile without le"
    assert queried == set(METRICS), f"metrics without a panel: {set(METRICS) - queried}"
    for variable in dashboard["templating"]["list"]:
        for name in re.findall(r"\b(gateway_[a-z_]+)", variable["definition"]):
            assert name in METRICS
