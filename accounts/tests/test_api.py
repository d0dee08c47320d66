"""The key self-service usage API over the Django test client: auth and error shape, the report from
UsageDaily plus events still queued in Redis, date ranges, and the OpenAPI schema."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils import timezone

from accounts.keys import key_hash
from accounts.models import ApiKey, UsageDaily
from accounts.services import api_key_set_enabled
from accounts.usage import usage_record
from aigateway.config_watch import config_watch
from providers.models import Model
from tests.support.data import key_create

URL = "/api/v1/usage"


def _get(client, key: str | None = None, header: str = "Authorization", **params):
    headers = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "Authorization" else key
    return client.get(URL, params, headers=headers)


def _queue_event(*, api_key_id: int, model: str, prompt: int, completion: int, when: datetime, status: int = 200):
    event = {
        "request_id": f"req-{time.monotonic_ns()}",
        "api_key_id": api_key_id,
        "model": model,
        "provider": "sim",
        "endpoint": "chat.completions",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "status_code": status,
        "created_at": when.timestamp(),
    }
    # Through the gateway's own writer: it raises the key's pending totals as it queues the event.
    asyncio.run(usage_record(event))


def _key_id(plaintext: str) -> int:
    return ApiKey.objects.get(key_hash=key_hash(plaintext)).pk


def _assert_error(response, status: int, *, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]
    return error


@pytest.mark.django_db
def test_missing_key_is_401_in_the_openai_error_shape(client):
    response = _get(client)

    error = _assert_error(response, 401, code="invalid_api_key")
    assert "Authorization: Bearer" in error["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["sk-gw-" + "x" * 43, "not-a-gateway-key"])
def test_unknown_key_is_401(client, key):
    _assert_error(_get(client, key), 401, code="invalid_api_key")


@pytest.mark.django_db
def test_disabled_key_is_401_within_one_config_check(client):
    plaintext = key_create("basic")
    assert _get(client, plaintext).status_code == 200

    api_key_set_enabled(api_key=ApiKey.objects.get(pk=_key_id(plaintext)), enabled=False)
    config_watch.invalidate()  # what GATEWAY_CONFIG_CHECK_SECONDS would do in production

    _assert_error(_get(client, plaintext), 401, code="invalid_api_key")


@pytest.mark.django_db
def test_report_merges_daily_rows_with_queued_events(client):
    fast = Model.objects.create(name="fast", input_price_per_million=1, output_price_per_million=2)
    Model.objects.create(name="slow", input_price_per_million=10, output_price_per_million=20)
    plaintext = key_create("pro", models=[fast], rpm=60, daily_tokens=100_000, max_output_tokens=512)
    other = key_create("other")
    key_id = _key_id(plaintext)
    now = timezone.now()
    today, yesterday = now.date(), now.date() - timedelta(days=1)
    UsageDaily.objects.create(
        date=yesterday, api_key_id=key_id, model="fast", requests=4, errors=1, prompt_tokens=400,
        completion_tokens=100, cost=Decimal("0.25"),
    )  # fmt: skip
    UsageDaily.objects.create(
        date=today, api_key_id=key_id, model="fast", requests=2, prompt_tokens=20, completion_tokens=10,
        cost=Decimal("0.5"),
    )  # fmt: skip
    UsageDaily.objects.create(date=today, api_key_id=_key_id(other), model="fast", requests=99, prompt_tokens=99)
    _queue_event(api_key_id=key_id, model="fast", prompt=1000, completion=500, when=now)
    _queue_event(api_key_id=key_id, model="slow", prompt=100_000, completion=0, when=now, status=502)
    _queue_event(api_key_id=_key_id(other), model="fast", prompt=7, completion=7, when=now)
    _queue_event(api_key_id=key_id, model="fast", prompt=5, completion=5, when=now - timedelta(days=40))

    response = _get(client, plaintext, header="x-api-key")

    assert response.status_code == 200, response.content
    body = response.json()
    prefix = ApiKey.objects.get(pk=key_id).prefix
    assert body["key"] == {"name": "pro-key", "prefix": prefix, "tier": "pro"}
    assert body["tier"] == {
        "name": "pro", "rpm": 60, "tpm": None, "max_concurrent": None, "daily_tokens": 100_000,
        "max_output_tokens": 512, "max_compare_models": 4, "models": ["fast"],
    }  # fmt: skip
    assert (body["start"], body["end"]) == (str(today - timedelta(days=29)), str(today))
    assert body["rows"] == [
        {"date": str(yesterday), "model": "fast", "requests": 4, "errors": 1, "prompt_tokens": 400,
         "completion_tokens": 100, "cost": "0.25000000"},
        {"date": str(today), "model": "fast", "requests": 3, "errors": 0, "prompt_tokens": 1020,
         "completion_tokens": 510, "cost": "0.50200000"},
        {"date": str(today), "model": "slow", "requests": 1, "errors": 1, "prompt_tokens": 100_000,
         "completion_tokens": 0, "cost": "1.00000000"},
    ]  # fmt: skip
    assert body["totals"] == {
        "requests": 8, "errors": 2, "prompt_tokens": 101_420, "completion_tokens": 610, "cost": "1.75200000",
    }  # fmt: skip
    remaining = body["remaining_today"]
    assert remaining["requests"]["limit"] == 60 and remaining["requests"]["remaining"] == 60
    assert remaining["tokens"] is None and remaining["concurrent"] is None
    assert remaining["daily_tokens"]["limit"] == 100_000
    assert remaining["daily_tokens"]["remaining"] == 100_000 - remaining["daily_tokens"]["used"]


@pytest.mark.django_db
def test_date_range_filters_rows(client):
    plaintext = key_create("basic")
    key_id = _key_id(plaintext)
    today = timezone.now().date()
    for days_ago in (0, 29, 30, 100):
        UsageDaily.objects.create(
            date=today - timedelta(days=days_ago), api_key_id=key_id, model="m", requests=days_ago + 1
        )
    old = datetime.combine(today - timedelta(days=100), datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    _queue_event(api_key_id=key_id, model="m", prompt=1, completion=1, when=old)

    default = _get(client, plaintext).json()
    assert [row["requests"] for row in default["rows"]] == [30, 1]

    start = end = str(today - timedelta(days=100))
    one_day = _get(client, plaintext, start=start, end=end).json()
    assert one_day["rows"] == [
        {"date": start, "model": "m", "requests": 102, "errors": 0, "prompt_tokens": 1, "completion_tokens": 1,
         "cost": "0.00000000"},
    ]  # fmt: skip

    from_start = _get(client, plaintext, start=str(today - timedelta(days=30))).json()
    assert [row["requests"] for row in from_start["rows"]] == [31, 30, 1]
    assert from_start["totals"]["requests"] == 62


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "param", "code", "needle"),
    [
        ({"start": "2024-13-01"}, "start", "invalid", "YYYY-MM-DD"),
        ({"end": "yesterday"}, "end", "invalid", "YYYY-MM-DD"),
        ({"start": "2024-03-02", "end": "2024-03-01"}, "start", "invalid_range", "after end"),
        ({"start": "2023-01-01", "end": "2024-01-02"}, "start", "range_too_long", "367 days"),
    ],
)
def test_bad_dates_are_400_naming_the_parameter(client, params, param, code, needle):
    plaintext = key_create("basic")

    error = _assert_error(_get(client, plaintext, **params), 400, code=code, param=param)

    assert error["message"].startswith(f"{param}: ")
    assert needle in error["message"]


@pytest.mark.django_db
def test_a_full_leap_year_is_allowed(client):
    plaintext = key_create("basic")

    response = _get(client, plaintext, start="2024-01-01", end="2024-12-31")

    assert response.status_code == 200
    assert response.json()["totals"]["requests"] == 0


@pytest.mark.django_db
def test_schema_describes_the_usage_endpoint(client):
    response = client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    schema = orjson.loads(response.content)
    operation = schema["paths"]["/api/v1/usage"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"start", "end"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/UsageReport")
    assert "401" in operation["responses"] and "400" in operation["responses"]
    report = schema["components"]["schemas"]["UsageReport"]["properties"]
    assert {"key", "tier", "remaining_today", "totals", "rows"} <= set(report)
    assert schema["components"]["securitySchemes"]["gatewayKey"]["scheme"] == "bearer"
