"""What deploy/compose.yaml asks of Redis and the proxy, run for real: its Redis configuration (password, memory
cap, no eviction, append-only) in a real redis-server, with a gateway and a Celery worker reaching it with the
password of their REDIS_URL; and the gateways believing X-Forwarded-For from nginx's address alone."""

import ipaddress
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from accounts.models import UsageRecord
from aigateway.embedded_redis import redis_binary
from tests.support.celery import broker_url_for
from tests.support.data import key_create, model_create, provider_create
from tests.support.ports import free_port, stop_process
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose.yaml"
PASSWORD = "redis-Pass-0123456789abcdef"


def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`, from `values`."""

    def one(match: re.Match) -> str:
        name, op, arg = match[1], match[2], match[3]
        if name in values:
            return values[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose needs {name}: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture
def compose_redis(tmp_path):
    """redis-server run with compose's redis_conf (the password filled in), on a loopback port and in tmp_path."""
    spec = _compose()
    service = spec["services"]["redis"]
    target = service["configs"][0]["target"]
    assert service["command"] == ["redis-server", target]
    conf = _interpolate(spec["configs"][service["configs"][0]["source"]]["content"], {"REDIS_PASSWORD": PASSWORD})
    port = free_port()
    # Where it listens and writes here (redis-server enters `dir` as it reads it); everything else as shipped.
    assert "\ndir /data\n" in conf
    local = conf.replace("\ndir /data\n", f"\ndir {tmp_path}\n") + f"\nport {port}\nbind 127.0.0.1\n"
    (tmp_path / "redis.conf").write_text(local)
    process = subprocess.Popen(
        [redis_binary(), str(tmp_path / "redis.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
    eventually(lambda: _answers(client), timeout=10, what="redis-server with compose's configuration")
    yield port
    stop_process(process)


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_compose_redis_requires_its_password_caps_memory_and_never_evicts(compose_redis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=compose_redis).ping()
    client = redis.Redis(host="127.0.0.1", port=compose_redis, password=PASSWORD, decode_responses=True)
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(client.config_get("maxmemory")["maxmemory"]) == 2 * 1024**3
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}

    # Full, it refuses writes rather than evicting what it holds (a queued usage event, a lease).
    client.rpush("gw:usage:queue-probe", "event")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 64 * 1024)
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        for index in range(1000):
            client.set(f"filler-{index}", "x" * 4096)
    assert client.lrange("gw:usage:queue-probe", 0, -1) == ["event"]


@pytest.mark.django_db(transaction=True)
def test_gateway_and_worker_reach_the_compose_redis_with_the_password_of_their_url(
    compose_redis, gateway_factory, celery_worker, fresh_simulator
):
    url = f"redis://:{PASSWORD}@127.0.0.1:{compose_redis}/0"
    spec = _compose()
    env = spec["x-gateway-env"]
    # compose's REDIS_URL is this one with the service's host and port.
    assert _interpolate(env["REDIS_URL"], {"REDIS_PASSWORD": PASSWORD}) == f"redis://:{PASSWORD}@redis:6379/0"

    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo?tokens=5", 0)])
    key = key_create("redis-password", rpm=100, max_concurrent=5)
    gateway = gateway_factory(REDIS_URL=url)
    celery_worker(flush_seconds=0.3, extra_env={"REDIS_URL": url, "CELERY_BROKER_URL": broker_url_for(url)})

    response = httpx.post(
        gateway.openai_base + "/chat/completions",
        json={"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    eventually(lambda: UsageRecord.objects.filter(request_id=request_id).exists(), timeout=30, what="usage flushed")
    assert httpx.get(gateway.url + "/health?checks=1", timeout=10).json()["checks"]["redis"] == "ok"

    # Without the password Redis answers nothing: the dependency check says so (by the error's type only).
    without = gateway_factory(REDIS_URL=f"redis://127.0.0.1:{compose_redis}/0")
    checks = httpx.get(without.url + "/health?checks=1", timeout=10)
    assert checks.status_code == 503
    assert checks.json()["checks"]["redis"].startswith("unreachable: Authentication"), checks.text
    assert PASSWORD not in gateway.log() + without.log()


def test_compose_gateways_believe_forwarded_headers_from_nginx_alone():
    spec = _compose()
    trusted = [entry.strip() for entry in spec["x-gateway-env"]["FORWARDED_ALLOW_IPS"].split(",")]
    nginx_address = spec["services"]["nginx"]["networks"]["backend"]["ipv4_address"]
    assert trusted == [nginx_address], trusted
    subnet = ipaddress.ip_network(spec["networks"]["backend"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(nginx_address) in subnet
    # nginx appends the address it received each request from to X-Forwarded-For, in every proxied location.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    proxied = nginx.count("proxy_pass http://aigateway;")
    assert proxied and nginx.count("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;") >= 2
