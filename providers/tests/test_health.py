"""Provider health checks against the real simulator over loopback: database record, Redis state, admin
action, and the Celery task in a real worker."""

import hashlib
import time
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from aigateway.redis import redis_sync
from providers.health import (
    HEALTH_DOWN_KEY,
    health_down_cooldown_seconds,
    provider_down_keys,
    provider_health_check,
    providers_health_check_all,
)
from providers.models import HealthCheck, HealthStatus, Provider
from providers.tasks import check_health, check_provider_health
from tests.support.data import provider_create
from tests.support.ports import free_port

UPSTREAM_KEY = "sk-upstream-health-0123456789"


def _down_key(provider: Provider) -> str:
    return HEALTH_DOWN_KEY.format(provider_id=provider.pk)


def test_down_keys_follow_the_pattern():
    assert provider_down_keys([3, 11]) == ["gw:health:down:3", "gw:health:down:11"]


@pytest.mark.django_db
def test_failing_provider_is_marked_down_after_one_check_and_up_after_recovery(fresh_simulator):
    provider = provider_create("sim-flaky", fresh_simulator.openai_base, api_key=UPSTREAM_KEY)
    fresh_simulator.configure(fail=500)

    result = provider_health_check(provider_id=provider.pk)

    assert not result.ok and result.status_code == 500
    provider.refresh_from_db()
    assert provider.health_status == HealthStatus.DOWN
    assert provider.health_consecutive_failures == 1
    assert provider.health_last_error.startswith("HTTP 500")
    assert provider.health_checked_at is not None
    check = HealthCheck.objects.get(provider=provider)
    assert (check.ok, check.status_code) == (False, 500)
    assert check.error == provider.health_last_error
    ttl = redis_sync().ttl(_down_key(provider))
    assert 0 < ttl <= health_down_cooldown_seconds()
    assert [r["path"] for r in fresh_simulator.requests()] == ["/v1/models"]

    assert check_provider_health(provider.pk) is False  # the task, run in process
    provider.refresh_from_db()
    assert provider.health_consecutive_failures == 2

    fresh_simulator.clear_config()
    result = provider_health_check(provider_id=provider.pk)

    assert result.ok and result.status_code == 200 and result.latency_ms > 0
    provider.refresh_from_db()
    assert provider.health_status == HealthStatus.UP
    assert provider.health_consecutive_failures == 0
    assert provider.health_last_error == ""
    assert provider.health_latency_ms == result.latency_ms
    assert redis_sync().exists(_down_key(provider)) == 0
    assert list(HealthCheck.objects.filter(provider=provider).order_by("id").values_list("ok", flat=True)) == [
        False,
        False,
        True,
    ]


@pytest.mark.django_db
def test_connection_refused_marks_down_with_a_clear_error():
    provider = provider_create("sim-gone", f"http://127.0.0.1:{free_port()}/v1", api_key=UPSTREAM_KEY)

    result = provider_health_check(provider_id=provider.pk)

    provider.refresh_from_db()
    assert provider.health_status == HealthStatus.DOWN
    assert result.status_code is None and result.latency_ms is None
    assert provider.health_last_error.startswith("ConnectError")
    assert "refused" in provider.health_last_error.lower()
    assert redis_sync().exists(_down_key(provider)) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("base_url", ["http://169.254.169.254/latest", "http://metadata.google.internal/v1"])
def test_the_probe_never_sends_the_key_to_a_metadata_address(base_url):
    """A row written past the admin's checks (ORM, SQL) is still not probed: the probe follows the
    same address policy as the relay."""
    provider = Provider(name="sneaky", dialect="openai", base_url=base_url)
    provider.api_key = UPSTREAM_KEY
    provider.save()

    started = time.monotonic()
    result = provider_health_check(provider_id=provider.pk)

    assert time.monotonic() - started < 2  # refused up front, not a connect attempt timing out
    provider.refresh_from_db()
    assert provider.health_status == HealthStatus.DOWN and result.status_code is None
    assert provider.health_last_error.startswith("upstream address refused")
    assert "GATEWAY_ALLOW_PRIVATE_UPSTREAMS" in provider.health_last_error


@pytest.mark.django_db
def test_the_provider_key_is_sent_and_never_recorded(simulator_factory):
    sim = simulator_factory(api_key=UPSTREAM_KEY)
    wrong = provider_create("sim-wrong-key", sim.openai_base, api_key="sk-upstream-not-the-right-one")
    right = provider_create("sim-right-key", sim.openai_base, api_key=UPSTREAM_KEY, extra_headers={"x-team": "ops"})
    claude = provider_create("sim-anthropic", sim.anthropic_base, dialect="anthropic", api_key=UPSTREAM_KEY)

    assert not provider_health_check(provider_id=wrong.pk).ok
    assert provider_health_check(provider_id=right.pk).ok
    assert provider_health_check(provider_id=claude.pk).ok

    wrong.refresh_from_db()
    assert wrong.health_status == HealthStatus.DOWN and wrong.health_last_error.startswith("HTTP 401")
    recorded = [wrong.health_last_error, *HealthCheck.objects.values_list("error", flat=True)]
    assert not any("sk-upstream" in text for text in recorded)

    openai_call, anthropic_call = sim.requests()[1:]
    right_hash = hashlib.sha256(UPSTREAM_KEY.encode()).hexdigest()
    assert openai_call["path"] == "/v1/models" and openai_call["auth_sha256"] == right_hash
    assert openai_call["headers"]["authorization"] == "***"
    assert openai_call["headers"]["x-team"] == "ops"
    assert anthropic_call["path"] == "/v1/models" and anthropic_call["auth_sha256"] == right_hash
    assert anthropic_call["headers"]["x-api-key"] == "***"
    assert anthropic_call["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in anthropic_call["headers"]


@pytest.mark.django_db
def test_errors_that_echo_the_key_are_redacted(monkeypatch):
    provider = provider_create("sim-echo-key", "http://127.0.0.1:9/v1", api_key=UPSTREAM_KEY)

    async def leaky_fetch(method, url, *, headers, **kwargs):
        raise __import__("httpx").ConnectError(f"cannot send {headers['Authorization']} to {url}")

    monkeypatch.setattr("providers.upstream.upstream_fetch", leaky_fetch)
    result = provider_health_check(provider_id=provider.pk)

    assert UPSTREAM_KEY not in result.error and "[redacted]" in result.error
    assert UPSTREAM_KEY not in HealthCheck.objects.get(provider=provider).error


@pytest.mark.django_db
def test_check_all_probes_enabled_providers_concurrently(fresh_simulator):
    fresh_simulator.configure(ttft_ms=300)
    up = [provider_create(f"sim-up-{n}", fresh_simulator.openai_base) for n in range(3)]
    down = provider_create("sim-down", f"http://127.0.0.1:{free_port()}/v1")
    disabled = provider_create("sim-disabled", fresh_simulator.openai_base, enabled=False)
    # History is the retention task's (accounts/tests/test_retention.py): a check leaves even old rows alone.
    old = HealthCheck.objects.create(provider=disabled, ok=True)
    HealthCheck.objects.filter(pk=old.pk).update(checked_at=timezone.now() - timedelta(days=400))

    started = time.monotonic()
    results = providers_health_check_all()
    elapsed = time.monotonic() - started

    assert {r.provider_name: r.ok for r in results} == {**{p.name: True for p in up}, down.name: False}
    assert elapsed < 0.9, "three probes that each take 300 ms ran one after another"
    assert not redis_sync().exists(*provider_down_keys(p.pk for p in up))
    assert redis_sync().exists(_down_key(down)) == 1

    summary = check_health()

    assert summary == {"up": 3, "down": 1}
    assert HealthCheck.objects.filter(pk=old.pk).exists()
    assert Provider.objects.get(pk=disabled.pk).health_status == HealthStatus.UNKNOWN


@pytest.mark.django_db
def test_admin_action_checks_the_selected_providers(admin_client, fresh_simulator):
    fresh_simulator.configure(fail=503)
    failing = provider_create("sim-503", fresh_simulator.openai_base)
    untouched = provider_create("sim-untouched", fresh_simulator.openai_base)

    response = admin_client.post(
        reverse("admin:providers_provider_changelist"),
        {"action": "check_health_now", "_selected_action": [failing.pk]},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert messages == ["Checked 1 provider(s): 0 up, 1 down. sim-503: HTTP 503 Service Unavailable"]
    assert Provider.objects.get(pk=failing.pk).health_status == HealthStatus.DOWN
    assert Provider.objects.get(pk=untouched.pk).health_status == HealthStatus.UNKNOWN


@pytest.mark.django_db(transaction=True)
def test_beat_and_a_real_worker_run_the_scheduled_health_check(celery_worker, fresh_simulator):
    fresh_simulator.configure(fail=500)
    provider = provider_create("sim-worker", fresh_simulator.openai_base)

    celery_worker(beat=True, extra_env={"GATEWAY_HEALTH_CHECK_SECONDS": "1"})

    deadline = time.monotonic() + 20
    # The status and its history row land together; the Redis mark just after them.
    while not (
        Provider.objects.get(pk=provider.pk).health_status == HealthStatus.DOWN
        and redis_sync().exists(_down_key(provider))
    ):
        assert time.monotonic() < deadline, "the scheduled check_health task did not run in the worker"
        time.sleep(0.1)
    check = HealthCheck.objects.filter(provider=provider).first()
    assert (check.ok, check.status_code) == (False, 500)
