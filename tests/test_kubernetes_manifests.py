"""The Kubernetes manifests under deploy/kubernetes/: valid objects of Kubernetes 1.30 (check-jsonschema against
the vendored strict schema, offline), consistent with each other and with the code (settings, ports, probe
paths, the CPU limit and the worker count, the shutdown timings), and run for real: each container's command
with its environment and its secrets as files, the gateway answering its probes the way the kubelet asks."""

import json
import math
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from django.urls import resolve

from tests.support.database import database_url_for_subprocess
from tests.support.ports import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SCHEMA = K8S / "schemas" / "kubernetes-v1.30-strict.json"
GUIDE = ROOT / "docs" / "kubernetes.md"
NOT_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
# What deploy/Dockerfile sets for every container of the image, and its user.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "DJANGO_SETTINGS_MODULE": "aigateway.settings"}
IMAGE_UID = 10001
APP_DIR = "/app"


def manifest_files() -> list[Path]:
    """Every Kubernetes object file (the Makefile's lint-kubernetes list)."""
    files = sorted(K8S.glob("*.yaml")) + sorted((K8S / "extras").glob("*.yaml"))
    return [path for path in files if path.name not in NOT_OBJECTS]


def load(path: Path) -> dict:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert len(documents) == 1, f"{path.name}: one object per file (check-jsonschema reads only the first)"
    return documents[0]


def objects() -> dict[str, dict]:
    return {path.relative_to(K8S).as_posix(): load(path) for path in manifest_files()}


def one(kind: str, component: str | None = None) -> dict:
    found = [
        obj
        for obj in objects().values()
        if obj["kind"] == kind
        and (component is None or obj["metadata"]["labels"].get("app.kubernetes.io/component") == component)
    ]
    assert len(found) == 1, f"{kind} {component}: {len(found)} objects"
    return found[0]


def workloads() -> dict[str, dict]:
    """component -> pod spec, of every Deployment and Job."""
    specs = {}
    for obj in objects().values():
        if obj["kind"] in ("Deployment", "Job"):
            specs[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = obj["spec"]["template"]["spec"]
    return specs


def container(component: str) -> dict:
    (only,) = workloads()[component]["containers"]
    return only


def config_map() -> dict[str, str]:
    return one("ConfigMap")["data"]


def settings_variables() -> set[str]:
    return set(
        re.findall(r"""\benv(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]*)["']""", (ROOT / "aigateway/settings.py").read_text())
    )


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "check-jsonschema"), "--schemafile", str(SCHEMA), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


# Schema validation (offline) -----------------------------------------------------------------------------------


def test_every_manifest_is_a_valid_kubernetes_1_30_object():
    run = check_jsonschema(*manifest_files())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "validation done" in run.stdout


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("gateway-deployment.yaml", "livenessProbe:", "livenesProbe:", "'livenesProbe' was unexpected"),
        ("gateway-deployment.yaml", 'cpu: "2"', "cpu: [2]", "requests.cpu"),
        ("gateway-deployment.yaml", "- name: gateway\n", "- nam: gateway\n", "'name' is a required property"),
        ("gateway-service.yaml", "kind: Service\n", "kind: Servce\n", "is not valid under any of the given schemas"),
        ("gateway-hpa.yaml", "averageValue:", "averageValu:", "'averageValu' was unexpected"),
        ("migrate-job.yaml", "restartPolicy: Never", "restartPolicy: [Never]", "restartPolicy"),
    ],
)
def test_the_schema_refuses_what_the_api_server_would(tmp_path, file, old, new, expected):
    text = (K8S / file).read_text()
    assert old in text
    broken = tmp_path / file
    broken.write_text(text.replace(old, new, 1))
    run = check_jsonschema(broken)
    assert run.returncode == 1, run.stdout
    assert expected in run.stdout, run.stdout


def test_the_vendored_schema_covers_exactly_the_kinds_the_manifests_use():
    schema = json.loads(SCHEMA.read_text())
    covered = {(branch["if"]["properties"]["apiVersion"]["const"], branch["if"]["properties"]["kind"]["const"])
               for branch in schema["allOf"]}  # fmt: skip
    used = {(obj["apiVersion"], obj["kind"]) for obj in objects().values()}
    assert used == covered
    assert "v1.30.0" in schema["$comment"] and "kubernetes-validate" in schema["$comment"]


def test_makefile_validates_the_same_files_and_make_test_runs_it():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\blint-kubernetes\b", makefile, re.MULTILINE)
    assert re.search(r"^\t\$\(MAKE\) .*\blint-migrations\b", makefile, re.MULTILINE)
    run = subprocess.run(["make", "-n", "lint-kubernetes"], cwd=ROOT, capture_output=True, text=True, check=True)
    line = next(line for line in run.stdout.splitlines() if "check-jsonschema" in line)
    listed = {Path(ROOT / word).resolve() for word in line.split() if word.endswith(".yaml")}
    assert listed == {path.resolve() for path in manifest_files()}


# Cross-references ------------------------------------------------------------------------------------------


def test_kustomization_lists_every_object_and_sets_the_image_of_every_container():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    top_level = {path.name for path in manifest_files() if path.parent == K8S}
    assert set(kustomization["resources"]) == top_level
    (image,) = kustomization["images"]
    for component, spec in workloads().items():
        for item in spec["containers"]:
            assert item["image"] == image["name"], component


def test_every_variable_the_manifests_set_is_one_the_settings_read():
    known = settings_variables()
    names = set(config_map())
    for component in workloads():
        names |= {entry["name"] for entry in container(component).get("env", [])}
    for name in sorted(names):
        base = name.removesuffix("_FILE")
        assert base in known, f"{name}: aigateway/settings.py reads no {base}"


def test_secret_files_are_under_the_mounted_secret_and_every_secret_variable_is_a_file():
    for component, spec in workloads().items():
        item = container(component)
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        secret_mounts = [m["mountPath"] for m in item["volumeMounts"] if "secret" in volumes[m["name"]]]
        assert secret_mounts, component
        for entry in item.get("env", []):
            if entry["name"].endswith("_FILE"):
                assert any(entry["value"].startswith(mount + "/") for mount in secret_mounts), (component, entry)
            assert not re.search(r"SECRET|TOKEN|PASSWORD|_URL$", entry["name"]) or entry["name"].endswith("_FILE"), (
                f"{component}: {entry['name']} would put a secret in the environment"
            )
    assert not {name for name in config_map() if re.search(r"SECRET|TOKEN|PASSWORD|DATABASE_URL|REDIS_URL", name)}


def test_ports_probes_service_and_ingress_agree_with_the_gateway():
    gateway = container("gateway")
    command = gateway["command"]
    port = int(command[command.index("--port") + 1])
    (declared,) = gateway["ports"]
    assert declared["containerPort"] == port and declared["name"] == "http"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gateway[probe]["httpGet"]["port"] == declared["name"], probe
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/health"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"

    from aigateway.asgi import API_PATHS

    for path in ("/health", "/ready"):
        resolve(path)  # a view answers it
        assert path in API_PATHS, f"{path} would go through Django's middleware (host check, HTTPS redirect)"

    deployment = one("Deployment", "gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one("Service", "gateway")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == declared["name"]
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"

    backend = one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": service_port["name"]}}
    from django.conf import settings

    body = one("Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.removesuffix("m")) * 1024 * 1024 == settings.GATEWAY_MAX_BODY_BYTES


def test_gateway_workers_follow_the_cpu_limit_in_whole_cores():
    gateway = container("gateway")
    (workers,) = [entry for entry in gateway["env"] if entry["name"] == "GATEWAY_WORKERS"]
    ref = workers["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": gateway["name"], "resource": "limits.cpu", "divisor": "1"}
    limit = cpu_cores(gateway["resources"]["limits"]["cpu"])
    assert limit == int(limit) >= 1, "a fractional limit would round the worker count up past it"
    assert cpu_cores(gateway["resources"]["requests"]["cpu"]) == limit
    assert "GATEWAY_WORKERS" not in config_map()


def test_the_gateways_stop_outlasts_the_prestop_pause_the_drain_and_the_stream_grace():
    spec = workloads()["gateway"]
    sleep = container("gateway")["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(config_map()["GATEWAY_DRAIN_SECONDS"])
    grace = float(config_map()["GATEWAY_SHUTDOWN_GRACE_SECONDS"])
    assert drain > 0 and grace >= 300, "long streams of coding agents and reasoning models need minutes"
    from aigateway.server import SHUTDOWN_MARGIN_SECONDS  # run_gateway's wait past the grace period

    assert spec["terminationGracePeriodSeconds"] >= float(sleep[1]) + drain + grace + SHUTDOWN_MARGIN_SECONDS


def test_autoscaling_reads_a_metric_the_gateway_exports_through_the_adapter_rule():
    hpa = one("HorizontalPodAutoscaler")
    deployment = one("Deployment", "gateway")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; an apply would reset it"
    assert hpa["spec"]["minReplicas"] >= 2
    (pods_metric,) = [metric["pods"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    name = pods_metric["metric"]["name"]
    from aigateway import metrics

    assert metrics.STREAMS_IN_FLIGHT._name == name and metrics.STREAMS_IN_FLIGHT._multiprocess_mode == "livesum"
    adapter = yaml.safe_load((K8S / "extras" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == name and name in rule["seriesQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_pods_run_unprivileged_on_a_read_only_root_with_scratch_space():
    for component, spec in workloads().items():
        assert spec["automountServiceAccountToken"] is False, component
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == IMAGE_UID, component
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, component
        item = container(component)
        context = item["securityContext"]
        assert context == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, component
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        writable = {m["mountPath"] for m in item["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
        # Settings create var/ (metrics files of the worker processes); temporary files go to /tmp.
        assert writable == {f"{APP_DIR}/var", "/tmp"}, component
    namespace = one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_one_beat_workers_and_a_migration_job_that_does_not_restart():
    assert one("Deployment", "beat")["spec"]["replicas"] == 1
    assert "beat" in container("beat")["command"]
    worker = container("worker")["command"]
    assert worker[:4] == ["celery", "-A", "aigateway", "worker"]
    job = one("Job", "migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container("migrate")["command"] == ["python", "manage.py", "migrate", "--noinput"]


def test_the_guide_counts_database_connections_as_the_manifests_allow():
    """Every process holds up to GATEWAY_DB_POOL_MAX_SIZE connections; at the most pods a rollout can run."""
    pool = int(config_map()["GATEWAY_DB_POOL_MAX_SIZE"])
    hpa_max = one("HorizontalPodAutoscaler")["spec"]["maxReplicas"]

    def surge(deployment: dict, replicas: int) -> int:
        rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
        value = str(rolling.get("maxSurge", "25%"))
        return math.ceil(replicas * int(value[:-1]) / 100) if value.endswith("%") else int(value)

    gateway, worker, beat = (one("Deployment", name) for name in ("gateway", "worker", "beat"))
    workers_per_pod = int(cpu_cores(container("gateway")["resources"]["limits"]["cpu"]))
    concurrency = int(container("worker")["command"][container("worker")["command"].index("--concurrency") + 1])
    total = (
        (hpa_max + surge(gateway, hpa_max)) * workers_per_pod * pool
        + (worker["spec"]["replicas"] + surge(worker, worker["spec"]["replicas"])) * (concurrency + 1) * pool
        + (beat["spec"]["replicas"] + surge(beat, beat["spec"]["replicas"])) * pool
        + pool  # the migration Job
    )
    assert f"**{total}** connections" in GUIDE.read_text()


# The containers, run ----------------------------------------------------------------------------------------


def container_env(component: str, secrets_dir: Path, secret_values: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the container: the image's, the ConfigMap's, then its own entries, with
    the secret volume's files under `secrets_dir` and resource references resolved."""
    item = container(component)
    (secret_mount,) = [m["mountPath"] for m in item["volumeMounts"] if m["name"] == "secrets"]
    for name, value in secret_values.items():
        (secrets_dir / name).write_text(value + "\n")  # as `kubectl create secret --from-file` usually gets them
    # The image puts its virtualenv first on PATH: this one, here.
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "LANG": "C.UTF-8", **IMAGE_ENV}
    for source in item.get("envFrom", []):
        assert source["configMapRef"]["name"] == one("ConfigMap")["metadata"]["name"]
        env.update(config_map())
    for entry in item.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"].replace(secret_mount, str(secrets_dir))
        else:
            ref = entry["valueFrom"]["resourceFieldRef"]
            quantity = item["resources"][ref["resource"].split(".")[0]][ref["resource"].split(".")[1]]
            env[entry["name"]] = str(math.ceil(cpu_cores(quantity) / float(ref["divisor"])))
    return env


def secret_values(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "django-secret-key": secrets.token_urlsafe(48),
        "database-url": database_url,
        "redis-url": redis_url,
        "provider-secret-key": secrets.token_urlsafe(32),
        "metrics-token": secrets.token_urlsafe(24),
    }


SETTINGS_PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "debug": settings.DEBUG, "secret_key": settings.SECRET_KEY, "database": settings.DATABASES["default"]["NAME"],
    "redis": settings.REDIS_URL, "provider_key": settings.PROVIDER_SECRET_KEY,
    "metrics_token": settings.GATEWAY_METRICS_TOKEN, "workers": settings.GATEWAY_WORKERS,
    "drain": settings.GATEWAY_DRAIN_SECONDS, "grace": settings.GATEWAY_SHUTDOWN_GRACE_SECONDS,
}))
"""


@pytest.mark.parametrize("component", ["gateway", "worker", "beat", "migrate"])
def test_each_container_reads_its_settings_and_secret_files(tmp_path, component):
    values = secret_values("postgres://gw:pw@db.example.internal:5432/gateway", "redis://redis.example.internal:6379/0")
    env = container_env(component, tmp_path, values)
    script = "import django; django.setup()\n" + SETTINGS_PROBE
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["debug"] is False
    assert loaded["secret_key"] == values["django-secret-key"]
    assert loaded["database"] == "gateway"
    assert loaded["redis"] == values["redis-url"]
    if component != "beat":
        assert loaded["provider_key"] == values["provider-secret-key"]
    if component == "gateway":
        assert loaded["metrics_token"] == values["metrics-token"]
        assert loaded["workers"] == int(cpu_cores(container("gateway")["resources"]["limits"]["cpu"]))
    assert loaded["drain"] == float(config_map()["GATEWAY_DRAIN_SECONDS"])
    assert loaded["grace"] == float(config_map()["GATEWAY_SHUTDOWN_GRACE_SECONDS"])
    for secret in values.values():
        assert secret not in run.stderr


def test_the_migration_job_migrates_an_empty_database(tmp_path, redis_server):
    database = tmp_path / "fresh.sqlite3"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    env = container_env("migrate", secrets_dir, secret_values(f"sqlite:///{database}", redis_server))
    command = container("migrate")["command"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    with sqlite3.connect(database) as conn:
        applied = {row[0] for row in conn.execute("SELECT app FROM django_migrations")}
    assert {"accounts", "providers"} <= applied


@pytest.mark.django_db(transaction=True)
def test_the_gateway_container_answers_the_kubelets_probes_and_drains_on_sigterm(tmp_path, redis_server):
    gateway = container("gateway")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    env = container_env("gateway", secrets_dir, secret_values(database_url_for_subprocess(), redis_server))
    command = list(gateway["command"])
    # Loopback and a free port here; the manifest's port is checked against the probes above.
    port = free_port()
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + gateway["startupProbe"]["httpGet"]["path"], timeout=60, process=process)
        # The kubelet sends the pod's address as Host, over plain HTTP, to a gateway with DEBUG off.
        probe_headers = {"Host": f"10.12.0.7:{gateway['ports'][0]['containerPort']}", "User-Agent": "kube-probe/1.30"}
        with httpx.Client(base_url=base, headers=probe_headers, timeout=5) as client:
            deadline = time.monotonic() + 30
            while (ready := client.get(gateway["readinessProbe"]["httpGet"]["path"])).status_code != 200:
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.2)
            live = client.get(gateway["livenessProbe"]["httpGet"]["path"])
            assert live.status_code == 200, live.text
            children = psutil.Process(process.pid).children()
            workers = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
            assert len(workers) == int(env["GATEWAY_WORKERS"]), [w.cmdline() for w in workers]

            # What the kubelet does after the preStop pause: SIGTERM. Readiness fails at once, liveness holds,
            # and requests are still served through GATEWAY_DRAIN_SECONDS.
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            while client.get(gateway["readinessProbe"]["httpGet"]["path"]).status_code != 503:
                assert time.monotonic() - stopped_at < 2, "readiness still passes after SIGTERM"
                time.sleep(0.05)
            assert client.get(gateway["livenessProbe"]["httpGet"]["path"]).status_code == 200
        drain = float(env["GATEWAY_DRAIN_SECONDS"])
        process.wait(timeout=drain + 30)
        elapsed = time.monotonic() - stopped_at
        assert process.returncode == 0, log_path.read_text(errors="replace")[-3000:]
        assert drain * 0.8 <= elapsed < workload_grace(), elapsed
    finally:
        stop_process(process)
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def workload_grace() -> float:
    return float(workloads()["gateway"]["terminationGracePeriodSeconds"])
