"""Refused requests are visible, over loopback against a real gateway, Redis and Celery worker: a known
key's 403 (model not allowed), 413 (body too large) and 429 (rate limit) are each one usage record with
that status, the error code, no tokens and no cost, under the request id the client was given, on the HTTP
doors, the compare door (per model) and the websocket; every refusal, with or without a known key, is
counted in gateway_refusals_total by status, code and key prefix; a 401 and an unknown-model 404 are
counted but never recorded."""

from decimal import Decimal

import httpx
import orjson
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from accounts.keys import key_hash
from accounts.models import ApiKey, Budget, Team, UsageRecord
from aigateway.config_watch import config_watch
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import usage_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]
TIMEOUT = 15.0


def refusals(gateway) -> dict[tuple[str, str, str], float]:
    """gateway_refusals_total by (status, code, key)."""
    page = httpx.get(gateway.url + "/metrics", timeout=10)
    assert page.status_code == 200, page.text
    counted = {}
    for family in text_string_to_metric_families(page.text):
        for sample in family.samples:
            if sample.name == "gateway_refusals_total":
                labels = sample.labels
                counted[(labels["status"], labels["code"], labels["key"])] = sample.value
    return counted


def records_of(key: str) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(api_key__key_hash=key_hash(key)).order_by("created_at"))


def prefix_of(key: str) -> str:
    return ApiKey.objects.get(key_hash=key_hash(key)).prefix


@pytest.fixture
def routes(simulator):
    sim = provider_create("sim", simulator.openai_base)
    open_model = model_create("rv-open", [(sim, "sim-echo?tokens=3", 0)])
    model_create("rv-closed", [(sim, "sim-echo?tokens=3", 0)])
    # One request a minute, and only rv-open: the second call is a 429, rv-closed a 403.
    key = key_create("rv-tier", models=[open_model], rpm=1)
    ApiKey.objects.filter(key_hash=key_hash(key)).update(team=Team.objects.create(name="rv-team"))
    config_watch.invalidate()
    return key


def _post(gateway, path: str, key: str, body, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers}
    return httpx.post(gateway.url + path, content=content, headers=headers, timeout=30)


def test_a_known_keys_refusals_are_recorded_once_and_counted(gateway, routes, celery_worker):
    key = routes
    prefix = prefix_of(key)
    api_key = ApiKey.objects.get(key_hash=key_hash(key))
    celery_worker(beat=True, flush_seconds=0.3)
    chat = {"model": "rv-open", "messages": MESSAGES}

    forbidden = _post(gateway, "/v1/chat/completions", key, {**chat, "model": "rv-closed", "stream": True})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "model_not_allowed"
    too_large = _post(gateway, "/v1/chat/completions", key, b" " * (settings.GATEWAY_MAX_BODY_BYTES + 1))
    assert too_large.status_code == 413, too_large.text
    # The Anthropic door books its refusal under its own endpoint.
    anthropic = _post(
        gateway,
        "/v1/messages",
        key,
        {"model": "rv-closed", "max_tokens": 10, "messages": MESSAGES},
        **{"anthropic-version": "2023-06-01"},
    )
    assert anthropic.status_code == 403 and anthropic.json()["error"]["type"] == "permission_error"
    served = _post(gateway, "/v1/chat/completions", key, chat)
    assert served.status_code == 200, served.text
    limited = _post(gateway, "/v1/chat/completions", key, chat)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    # Counted, never recorded: an unknown model, a request without a valid key.
    unknown = _post(gateway, "/v1/chat/completions", key, {**chat, "model": "rv-no-such-model"})
    assert unknown.status_code == 404
    before = refusals(gateway).get(("401", "invalid_api_key", ""), 0)
    bad_key = _post(gateway, "/v1/chat/completions", "sk-gw-not-a-key", chat)
    assert bad_key.status_code == 401

    eventually(lambda: len(records_of(key)) >= 5, timeout=TIMEOUT, what="five usage records")
    refused = {response.headers["x-request-id"]: response for response in (forbidden, too_large, anthropic, limited)}
    assert len(refused) == 4  # a request id of its own per refusal
    records = records_of(key)
    assert len(records) == 5, [(r.status_code, r.error_type) for r in records]
    by_id = {record.request_id: record for record in records}
    assert by_id[served.headers["x-request-id"]].status_code == 200
    expected = {
        forbidden.headers["x-request-id"]: (403, "model_not_allowed", "chat.completions", "rv-closed", True),
        too_large.headers["x-request-id"]: (413, "request_too_large", "chat.completions", "(unknown)", False),
        anthropic.headers["x-request-id"]: (403, "model_not_allowed", "messages", "rv-closed", False),
        limited.headers["x-request-id"]: (429, "rate_limit_exceeded", "chat.completions", "rv-open", False),
    }
    for request_id, (status, code, endpoint, model, stream) in expected.items():
        record = by_id[request_id]
        assert (record.status_code, record.error_type, record.endpoint, record.model, record.stream) == (
            status,
            code,
            endpoint,
            model,
            stream,
        ), request_id
        assert (record.prompt_tokens, record.completion_tokens, record.cached_tokens) == (0, 0, 0)
        assert record.cost == Decimal(0) and record.provider == "" and record.deployment_id is None
        # Booked to whom the key belongs, like any call: its owner and its team.
        assert (record.user_id, record.team_id) == (api_key.owner_id, api_key.team_id) and record.team_id
    assert anthropic.headers["request-id"] == anthropic.headers["x-request-id"]

    def counted() -> bool:
        now = refusals(gateway)
        return (
            now.get(("403", "model_not_allowed", prefix)) == 2
            and now.get(("413", "request_too_large", prefix)) == 1
            and now.get(("429", "rate_limit_exceeded", prefix)) == 1
            and now.get(("404", "model_not_found", prefix)) == 1
            and now.get(("401", "invalid_api_key", ""), 0) >= before + 1
        )

    eventually(counted, timeout=TIMEOUT, what=f"refusals counted: {refusals(gateway)}")
    assert {labels for labels in refusals(gateway) if labels[2] == prefix} == {
        ("403", "model_not_allowed", prefix),
        ("413", "request_too_large", prefix),
        ("429", "rate_limit_exceeded", prefix),
        ("404", "model_not_found", prefix),
    }
    # Nothing more arrives later: each refusal is one record.
    assert len(records_of(key)) == 5
    assert not UsageRecord.objects.filter(model="rv-no-such-model").exists()


def test_compare_and_websocket_refusals_are_recorded_under_the_id_the_client_was_given(gateway, routes, celery_worker):
    key = routes
    prefix = prefix_of(key)
    celery_worker(beat=True, flush_seconds=0.3)
    served = _post(gateway, "/v1/chat/completions", key, {"model": "rv-open", "messages": MESSAGES})
    assert served.status_code == 200  # the minute's one request is used

    # /v1/compare: the model's admission is refused inside the stream; the run's results name its request id.
    compare = _post(gateway, "/v1/compare", key, {"models": ["rv-open"], "messages": MESSAGES})
    assert compare.status_code == 200, compare.text
    events = [orjson.loads(line[6:]) for line in compare.text.splitlines() if line.startswith("data: {")]
    result = events[-1]["results"]["rv-open"]
    assert result["error"]["status"] == 429 and result["error"]["code"] == "rate_limit_exceeded"
    # /v1/compare refused as a whole: a model the key may not use.
    forbidden = _post(gateway, "/v1/compare", key, {"models": ["rv-open", "rv-closed"], "messages": MESSAGES})
    assert forbidden.status_code == 403

    # The websocket: an error frame of a known key carries the request id of its record.
    ws_url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    with ws_connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(" " * (settings.GATEWAY_MAX_BODY_BYTES + 1))
        frame = orjson.loads(ws.recv(timeout=10))
        assert (frame["type"], frame["status"], frame["code"]) == ("error", 413, "request_too_large"), frame
        ws.send(orjson.dumps({"type": "chat", "models": ["rv-closed"], "messages": MESSAGES}).decode())
        not_allowed = orjson.loads(ws.recv(timeout=10))
        assert (not_allowed["status"], not_allowed["code"]) == (403, "model_not_allowed"), not_allowed
        ws.send("not json")
        malformed = orjson.loads(ws.recv(timeout=10))
        assert malformed["status"] == 400 and "request_id" not in malformed  # counted, not recorded

    eventually(lambda: len(records_of(key)) >= 5, timeout=TIMEOUT, what="five usage records")
    by_id = {record.request_id: record for record in records_of(key)}
    assert len(by_id) == 5, by_id
    expected = {
        result["request_id"]: (429, "rate_limit_exceeded", "rv-open"),
        forbidden.headers["x-request-id"]: (403, "model_not_allowed", "rv-open,rv-closed"),
        frame["request_id"]: (413, "request_too_large", "(unknown)"),
        not_allowed["request_id"]: (403, "model_not_allowed", "rv-closed"),
    }
    for request_id, (status, code, model) in expected.items():
        record = by_id[request_id]
        assert (record.status_code, record.error_type, record.endpoint, record.model) == (
            status,
            code,
            "compare",
            model,
        )
        assert (record.prompt_tokens, record.completion_tokens, record.cost) == (0, 0, Decimal(0))
    assert by_id[result["request_id"]].run_id == events[-1]["run_id"]

    def counted() -> bool:
        now = refusals(gateway)
        return (
            now.get(("429", "rate_limit_exceeded", prefix)) == 1
            and now.get(("403", "model_not_allowed", prefix)) == 2
            and now.get(("413", "request_too_large", prefix)) == 1
            and now.get(("400", "invalid_request", prefix)) == 1
        )

    eventually(counted, timeout=TIMEOUT, what=f"refusals counted: {refusals(gateway)}")


def test_a_websocket_without_a_valid_key_is_counted_under_no_key(gateway, routes):
    before = refusals(gateway).get(("401", "unauthenticated", ""), 0)
    ws_url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    with ws_connect(ws_url, additional_headers={"Authorization": "Bearer sk-gw-not-a-key"}) as ws:
        frame = orjson.loads(ws.recv(timeout=10))
    assert (frame["status"], frame["code"]) == (401, "unauthenticated") and "request_id" not in frame
    eventually(
        lambda: refusals(gateway).get(("401", "unauthenticated", ""), 0) == before + 1,
        timeout=TIMEOUT,
        what="the 401 counted",
    )
    # Nothing to book it to: no usage event is queued for it.
    assert not [event for event in usage_events() if event.get("error_type") == "unauthenticated"]


def test_a_budget_refusal_is_recorded_with_its_code(gateway, simulator, celery_worker):
    sim = provider_create("sim", simulator.openai_base)
    model_create(
        "rv-priced", [(sim, "sim-echo?tokens=3", 0)], input_price_per_million=1000, output_price_per_million=1000
    )
    key = key_create("rv-budget")
    api_key = ApiKey.objects.get(key_hash=key_hash(key))
    Budget.objects.create(scope="key", api_key=api_key, period="month", amount=Decimal("0.0001"))
    config_watch.invalidate()
    celery_worker(beat=True, flush_seconds=0.3)

    refused = _post(
        gateway, "/v1/chat/completions", key, {"model": "rv-priced", "messages": MESSAGES, "max_tokens": 500}
    )

    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    eventually(lambda: records_of(key), timeout=TIMEOUT, what="the refusal's record")
    [record] = records_of(key)
    assert (record.request_id, record.status_code, record.error_type) == (
        refused.headers["x-request-id"],
        429,
        "budget_exceeded",
    )
    assert (record.prompt_tokens, record.completion_tokens, record.cost) == (0, 0, Decimal(0))
    eventually(
        lambda: refusals(gateway).get(("429", "budget_exceeded", api_key.prefix)) == 1,
        timeout=TIMEOUT,
        what="the budget refusal counted",
    )
