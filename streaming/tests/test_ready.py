"""GET /ready: readiness (database, Redis, a provider not marked down), over loopback against real gateway
processes; 503 names what is missing and nothing secret."""

import socket
import time

import httpx
import pytest

from aigateway.embedded_redis import redis_server_start
from aigateway.redis import redis_sync
from providers.health import HEALTH_DOWN_KEY
from providers.models import Provider
from tests.support.data import provider_create
from tests.support.ports import free_port, stop_process

pytestmark = pytest.mark.django_db(transaction=True)

ALL_UP = {"database": "ok", "redis": "ok", "providers": "ok"}


def _ready(url: str) -> httpx.Response:
    return httpx.get(url + "/ready", timeout=10)


def _assert_nothing_secret(response: httpx.Response, *secrets: str) -> None:
    text = response.text
    for secret in ("sk-upstream-test", "Traceback", "127.0.0.1", "unix://", *secrets):
        assert secret not in text, text


def test_ready_when_database_redis_and_a_provider_are_up(gateway, fresh_simulator):
    provider_create("sim", fresh_simulator.openai_base)
    provider_create("sim-down", fresh_simulator.openai_base)
    redis_sync().set(HEALTH_DOWN_KEY.format(provider_id=Provider.objects.get(name="sim-down").pk), 1)

    response = _ready(gateway.url)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": ALL_UP}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    _assert_nothing_secret(response, fresh_simulator.url)

    head = httpx.head(gateway.url + "/ready", timeout=10)
    assert head.status_code == 200 and head.content == b""


def test_not_ready_when_every_enabled_provider_is_down_or_disabled(gateway, fresh_simulator):
    response = _ready(gateway.url)
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "checks": {"database": "ok", "redis": "ok", "providers": "no provider is enabled"},
    }

    up = provider_create("sim-a", fresh_simulator.openai_base)
    down = provider_create("sim-b", fresh_simulator.openai_base)
    redis_sync().set(HEALTH_DOWN_KEY.format(provider_id=down.pk), 1)
    assert _ready(gateway.url).status_code == 200

    # The only provider not marked down is disabled: none is left.
    up.enabled = False
    up.save()
    response = _ready(gateway.url)
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "providers": "no enabled provider is healthy",
    }
    _assert_nothing_secret(response, "sim-a", "sim-b", fresh_simulator.url)

    # The health check clears the mark: ready again.
    redis_sync().delete(HEALTH_DOWN_KEY.format(provider_id=down.pk))
    assert _ready(gateway.url).json() == {"status": "ready", "checks": ALL_UP}


def test_not_ready_names_the_database_when_it_is_unreachable(gateway_factory, fresh_simulator, tmp_path):
    provider_create("sim", fresh_simulator.openai_base)
    missing = tmp_path / "no-such-dir" / "db.sqlite3"
    handle = gateway_factory(DATABASE_URL=f"sqlite:///{missing}")

    response = _ready(handle.url)
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "checks": {
            "database": "unreachable: OperationalError",
            "redis": "ok",
            "providers": "unknown: database unreachable",
        },
    }
    _assert_nothing_secret(response, str(missing), "no-such-dir")
    assert "Traceback" not in handle.log()


def test_not_ready_names_redis_when_it_is_down_and_ready_again_when_it_is_back(
    gateway_factory, fresh_simulator, tmp_path
):
    provider_create("sim", fresh_simulator.openai_base)
    socket_path = tmp_path / "redis.sock"
    private_redis = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
    try:
        handle = gateway_factory(REDIS_URL=f"unix://{socket_path}")
        assert _ready(handle.url).json() == {"status": "ready", "checks": ALL_UP}

        stop_process(private_redis)
        started = time.monotonic()
        response = _ready(handle.url)
        assert time.monotonic() - started < 3.0
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["redis"].startswith("unreachable: ") and "Error" in checks["redis"], checks
        assert checks["providers"] == "unknown: redis unreachable"
        _assert_nothing_secret(response, str(socket_path))

        private_redis = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
        assert _ready(handle.url).json() == {"status": "ready", "checks": ALL_UP}
    finally:
        stop_process(private_redis)


def test_a_hung_redis_does_not_hang_the_probe(gateway_factory, fresh_simulator):
    provider_create("sim", fresh_simulator.openai_base)
    # Accepts connections (the kernel completes them from the backlog) and never answers a command.
    with socket.create_server(("127.0.0.1", free_port())) as hung:
        port = hung.getsockname()[1]
        handle = gateway_factory(REDIS_URL=f"redis://127.0.0.1:{port}/0")
        for _ in range(2):  # the second probe finds the first one's check still waiting
            started = time.monotonic()
            response = _ready(handle.url)
            took = time.monotonic() - started
            assert response.status_code == 503
            checks = response.json()["checks"]
            assert checks == {
                "database": "ok",
                "redis": "no answer within 2s",
                "providers": "unknown: redis unreachable",
            }
            assert 1.8 < took < 4.0, took


def test_other_methods_get_a_json_405(gateway):
    for method in ("POST", "PUT", "DELETE"):
        response = httpx.request(method, gateway.url + "/ready", timeout=10)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["error"]["code"] == "method_not_allowed"
