"""GET /ready: readiness of this process (not draining, its route table loaded), and GET /health?checks=1: the
health of what it depends on (database, Redis, a provider not marked down); over loopback against real gateway
processes. A store going down fails the second, never the first; neither names anything secret."""

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

READY = {"status": "ready", "checks": {"process": "serving", "route_table": "loaded"}}
ALL_UP = {"database": "ok", "redis": "ok", "providers": "ok"}


def _ready(url: str) -> httpx.Response:
    return httpx.get(url + "/ready", timeout=10)


def _checks(url: str) -> httpx.Response:
    return httpx.get(url + "/health?checks=1", timeout=10)


def _assert_nothing_secret(response: httpx.Response, *secrets: str) -> None:
    text = response.text
    for secret in ("sk-upstream-test", "Traceback", "127.0.0.1", "unix://", *secrets):
        assert secret not in text, text


def test_ready_while_serving_and_dependency_checks_on_request(gateway, fresh_simulator):
    provider_create("sim", fresh_simulator.openai_base)
    provider_create("sim-down", fresh_simulator.openai_base)
    redis_sync().set(HEALTH_DOWN_KEY.format(provider_id=Provider.objects.get(name="sim-down").pk), 1)

    response = _ready(gateway.url)
    assert response.status_code == 200, response.text
    assert response.json() == READY
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    _assert_nothing_secret(response, fresh_simulator.url)

    head = httpx.head(gateway.url + "/ready", timeout=10)
    assert head.status_code == 200 and head.content == b""

    checks = _checks(gateway.url)
    assert checks.status_code == 200 and checks.json() == {"status": "ok", "checks": ALL_UP}
    assert checks.headers["cache-control"] == "no-store"
    _assert_nothing_secret(checks, fresh_simulator.url)
    # Plain /health stays the liveness answer, with no store touched.
    assert httpx.get(gateway.url + "/health", timeout=10).json() == {"status": "ok"}


def test_providers_down_or_disabled_show_in_the_checks_not_in_readiness(gateway, fresh_simulator):
    assert _ready(gateway.url).json() == READY
    response = _checks(gateway.url)
    assert response.status_code == 503
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "redis": "ok", "providers": "no provider is enabled"},
    }

    up = provider_create("sim-a", fresh_simulator.openai_base)
    down = provider_create("sim-b", fresh_simulator.openai_base)
    redis_sync().set(HEALTH_DOWN_KEY.format(provider_id=down.pk), 1)
    assert _checks(gateway.url).status_code == 200

    # The only provider not marked down is disabled: none is left. Every gateway is in the same state, so
    # taking them out of rotation would not help anyone: readiness stays.
    up.enabled = False
    up.save()
    response = _checks(gateway.url)
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "providers": "no enabled provider is healthy"}
    _assert_nothing_secret(response, "sim-a", "sim-b", fresh_simulator.url)
    assert _ready(gateway.url).json() == READY

    redis_sync().delete(HEALTH_DOWN_KEY.format(provider_id=down.pk))
    assert _checks(gateway.url).json() == {"status": "ok", "checks": ALL_UP}


def test_not_ready_until_the_route_table_could_be_loaded(gateway_factory, fresh_simulator, tmp_path):
    """A process that never reached its database has no routes to serve with: not ready, saying why."""
    provider_create("sim", fresh_simulator.openai_base)
    missing = tmp_path / "no-such-dir" / "db.sqlite3"
    handle = gateway_factory(DATABASE_URL=f"sqlite:///{missing}")

    response = _ready(handle.url)
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "checks": {"process": "serving", "route_table": "not loaded: unreachable: OperationalError"},
    }
    _assert_nothing_secret(response, str(missing), "no-such-dir")

    checks = _checks(handle.url)
    assert checks.status_code == 503
    assert checks.json()["checks"] == {
        "database": "unreachable: OperationalError",
        "redis": "ok",
        "providers": "unknown: database unreachable",
    }
    _assert_nothing_secret(checks, str(missing), "no-such-dir")
    assert "Traceback" not in handle.log()


def test_redis_going_down_does_not_fail_readiness(gateway_factory, fresh_simulator, tmp_path):
    provider_create("sim", fresh_simulator.openai_base)
    socket_path = tmp_path / "redis.sock"
    private_redis = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
    try:
        handle = gateway_factory(REDIS_URL=f"unix://{socket_path}")
        assert _ready(handle.url).json() == READY
        assert _checks(handle.url).json() == {"status": "ok", "checks": ALL_UP}

        stop_process(private_redis)
        for _ in range(3):  # the config check that reads Redis runs on every request of these gateways
            started = time.monotonic()
            response = _ready(handle.url)
            assert time.monotonic() - started < 1.0
            assert response.status_code == 200 and response.json() == READY, response.text
        assert httpx.get(handle.url + "/health", timeout=10).status_code == 200

        # The outage shows where monitoring looks.
        started = time.monotonic()
        checks = _checks(handle.url)
        assert time.monotonic() - started < 3.0
        assert checks.status_code == 503
        body = checks.json()["checks"]
        assert body["database"] == "ok"
        assert body["redis"].startswith("unreachable: ") and "Error" in body["redis"], body
        assert body["providers"] == "unknown: redis unreachable"
        _assert_nothing_secret(checks, str(socket_path))

        private_redis = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
        assert _checks(handle.url).json() == {"status": "ok", "checks": ALL_UP}
        assert _ready(handle.url).json() == READY
    finally:
        stop_process(private_redis)


def test_a_hung_redis_neither_hangs_the_checks_nor_fails_readiness(gateway_factory, fresh_simulator):
    provider_create("sim", fresh_simulator.openai_base)
    # Accepts connections (the kernel completes them from the backlog) and never answers a command.
    with socket.create_server(("127.0.0.1", free_port())) as hung:
        port = hung.getsockname()[1]
        handle = gateway_factory(REDIS_URL=f"redis://127.0.0.1:{port}/0", GATEWAY_CONFIG_CHECK_SECONDS="60")
        for _ in range(2):  # the second probe finds the first one's check still waiting
            started = time.monotonic()
            response = _checks(handle.url)
            took = time.monotonic() - started
            assert response.status_code == 503
            assert response.json()["checks"] == {
                "database": "ok",
                "redis": "no answer within 2s",
                "providers": "unknown: redis unreachable",
            }
            assert 1.8 < took < 4.0, took
        started = time.monotonic()
        assert _ready(handle.url).json() == READY
        assert time.monotonic() - started < 1.0


def test_other_methods_get_a_json_405(gateway):
    for method in ("POST", "PUT", "DELETE"):
        response = httpx.request(method, gateway.url + "/ready", timeout=10)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["error"]["code"] == "method_not_allowed"
