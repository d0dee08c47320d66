"""The ops dashboard in the admin: numbers per provider, model and key over a window, percentile math,
the time series, and that only staff can see it."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.keys import key_hash
from accounts.models import ApiKey, UsageRecord
from accounts.selectors import percentile, usage_timeseries
from tests.support.data import key_create

URL = "/admin/dashboard/"


def _record(n: int, *, provider: str, model: str, ago: timedelta, status: int = 200, ttfb: float | None = None,
            api_key_id: int | None = None, prompt: int = 10, completion: int = 5) -> None:  # fmt: skip
    UsageRecord.objects.create(
        request_id=f"req-{provider}-{model}-{n}-{ago.total_seconds()}",
        api_key_id=api_key_id,
        model=model,
        provider=provider,
        endpoint="chat.completions",
        status_code=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost=Decimal("0.001"),
        ttfb_ms=ttfb,
        created_at=timezone.now() - ago,
    )


@pytest.fixture
def traffic(db):
    """sim-a serves m1 with TTFB 100..500 ms; sim-b has one 502 and one 499; an older request is 2 h old."""
    alpha = ApiKey.objects.get(key_hash=key_hash(key_create("alpha")))
    beta = ApiKey.objects.get(key_hash=key_hash(key_create("beta")))
    for n, ttfb in enumerate([300.0, 100.0, 500.0, 200.0, 400.0]):
        _record(n, provider="sim-a", model="m1", ago=timedelta(minutes=5), ttfb=ttfb, api_key_id=alpha.pk,
                prompt=1000, completion=234)  # fmt: skip
    _record(10, provider="sim-b", model="m2", ago=timedelta(minutes=20), status=502, api_key_id=beta.pk)
    _record(11, provider="sim-b", model="m2", ago=timedelta(minutes=20), status=499, ttfb=50.0, api_key_id=beta.pk)
    _record(12, provider="sim-b", model="m2", ago=timedelta(hours=2), ttfb=70.0, api_key_id=beta.pk)
    return alpha, beta


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([42.0], 95, 42.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([5.0, 1.0, 3.0], 50, 3.0),
        ([float(v) for v in range(1, 101)], 95, 95.05),
        ([100.0, 200.0, 300.0, 400.0, 500.0], 95, 480.0),
        ([10.0, 20.0], 100, 20.0),
        ([10.0, 20.0], 0, 10.0),
    ],
)
def test_percentile_interpolates_between_ranks(values, q, expected):
    result = percentile(values, q)
    assert result == pytest.approx(expected) if expected is not None else result is None


def test_dashboard_shows_last_hour_per_provider_model_and_key(admin_client, traffic):
    response = admin_client.get(URL)

    assert response.status_code == 200
    providers = {row["name"]: row for row in response.context["providers"]}
    assert set(providers) == {"sim-a", "sim-b"}
    assert providers["sim-a"]["requests"] == 5 and providers["sim-a"]["errors"] == 0
    assert providers["sim-a"]["ttfb_p50_ms"] == pytest.approx(300.0)
    assert providers["sim-a"]["ttfb_p95_ms"] == pytest.approx(480.0)
    assert providers["sim-a"]["prompt_tokens"] == 5000 and providers["sim-a"]["completion_tokens"] == 1170
    assert (providers["sim-b"]["requests"], providers["sim-b"]["errors"]) == (2, 1)  # 499 is not an error
    assert [row["name"] for row in response.context["models"]] == ["m1", "m2"]
    assert [(row["name"], row["requests"]) for row in response.context["endpoints"]] == [("chat.completions", 7)]
    assert "Per endpoint" in response.content.decode()
    assert [row["key_name"] for row in response.context["top_keys"]] == ["alpha-key", "beta-key"]
    assert response.context["top_keys"][0]["tokens"] == 6170
    summary = response.context["summary"]
    assert (summary["requests"], summary["errors"]) == (7, 1)

    html = response.content.decode()
    for text in ("sim-a", "m2", "alpha-key", "480.0", "300.0", "5000", "1170", "6170", "<svg"):
        assert text in html, text
    external = [url for url in re.findall(r'(?:src|href)="([^"]*)"', html) if url.startswith(("http", "//"))]
    assert external == []  # the page works without internet access


def test_day_window_includes_older_requests(admin_client, traffic):
    response = admin_client.get(URL, {"window": "24h"})

    assert response.status_code == 200
    sim_b = next(row for row in response.context["providers"] if row["name"] == "sim-b")
    assert sim_b["requests"] == 3
    assert sim_b["ttfb_p50_ms"] == pytest.approx(60.0)
    assert len(response.context["timeseries"]) in (24, 25)
    assert sum(point["requests"] for point in response.context["timeseries"]) == 8


def test_timeseries_counts_requests_per_minute(traffic):
    now = timezone.now()

    series = usage_timeseries(since=now - timedelta(hours=1), until=now, bucket="minute")

    assert len(series) == 61
    assert all(b["start"] - a["start"] == timedelta(minutes=1) for a, b in zip(series, series[1:], strict=False))
    busy = {point["start"]: point for point in series if point["requests"]}
    five_ago = (now - timedelta(minutes=5)).replace(second=0, microsecond=0)
    twenty_ago = (now - timedelta(minutes=20)).replace(second=0, microsecond=0)
    assert busy[five_ago]["requests"] == 5
    assert (busy[twenty_ago]["requests"], busy[twenty_ago]["errors"]) == (2, 1)
    assert len(busy) == 2


def test_dashboard_renders_without_traffic(admin_client, db):
    response = admin_client.get(URL, {"window": "bogus"})

    assert response.status_code == 200
    assert response.context["window"] == "1h"
    assert "No requests in this window." in response.content.decode()


def test_admin_index_links_to_the_dashboard(admin_client):
    response = admin_client.get("/admin/")

    assert response.status_code == 200
    assert f'href="{URL}"' in response.content.decode()


@pytest.mark.django_db
def test_non_staff_are_sent_to_the_login_page(client):
    user = get_user_model().objects.create_user("viewer", password="pw-123456789", is_staff=False)
    client.force_login(user)

    response = client.get(URL)

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/?next=/admin/dashboard/")
    client.logout()
    assert client.get(URL).status_code == 302
