"""What a /v1/compare request may say: `stream` (the run always streams), and request headers that
routing rules look at. A gateway process, the simulator, real Redis, over loopback HTTP."""

import httpx
import orjson
import pytest

from accounts.keys import key_hash
from accounts.models import ApiKey
from aigateway.errors import GatewayError
from providers.models import RouteRule
from streaming.compare import compare_calls
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import usage_events, wait_usage

MESSAGES = [{"role": "user", "content": "Route me"}]


@pytest.fixture
def sim(fresh_simulator):
    return provider_create("sim", fresh_simulator.openai_base)


@pytest.mark.parametrize(
    ("stream", "complaint"),
    [
        ("yes", "'stream' must be a boolean"),
        (1, "'stream' must be a boolean"),
        ({}, "'stream' must be a boolean"),
        (False, "always streams"),
    ],
)
def test_stream_must_be_true_or_left_out(stream, complaint):
    with pytest.raises(GatewayError) as raised:
        compare_calls({"models": ["a"], "messages": MESSAGES, "stream": stream}, cap=4)
    assert (raised.value.status, raised.value.param) == (400, "stream")
    assert complaint in raised.value.message


@pytest.mark.parametrize("body", [{}, {"stream": True}, {"stream": None}, {"stream": True, "stream_options": {}}])
def test_a_streaming_body_is_accepted(body):
    calls = compare_calls({"models": ["a"], "messages": MESSAGES, **body}, cap=4)
    assert calls["a"][0]["stream"] is True


def test_stream_options_must_be_an_object():
    with pytest.raises(GatewayError) as raised:
        compare_calls({"models": ["a"], "messages": MESSAGES, "stream_options": "yes"}, cap=4)
    assert (raised.value.status, raised.value.param) == (400, "stream_options")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stream", ["yes", False])
def test_a_bad_stream_is_a_400_in_openais_shape_and_nothing_runs(gateway, sim, fresh_simulator, stream):
    model_create("entry", [(sim, "sim-echo", 0)])
    key = key_create("streams")
    key_id = ApiKey.objects.get(key_hash=key_hash(key)).id
    response = httpx.post(
        gateway.url + "/v1/compare",
        json={"models": ["entry"], "messages": MESSAGES, "stream": stream},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "stream"
    assert "stream" in error["message"]
    assert not [e for e in usage_events() if e["api_key_id"] == key_id]
    assert not fresh_simulator.requests()


def _compare(gateway, key: str, body: dict, **headers) -> tuple[dict, str]:
    """A whole /v1/compare run: its events by (model, type), and its run id."""
    response = httpx.post(
        gateway.url + "/v1/compare", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30
    )
    assert response.status_code == 200, response.text
    frames = [frame.removeprefix("data: ") for frame in response.text.split("\n\n") if frame]
    assert frames[-1] == "[DONE]", frames
    events = {(e.get("model"), e["type"]): e for e in map(orjson.loads, frames[:-1])}
    return events, response.headers["x-gateway-run-id"]


@pytest.mark.django_db(transaction=True)
def test_a_header_rule_routes_the_models_of_a_compare(gateway, sim, fresh_simulator):
    model_create("entry", [(sim, "sim-echo", 0)])
    special = model_create("special", [(sim, "sim-mini", 0)])
    RouteRule.objects.create(name="background", when={"header": {"x-gateway-route": "background"}}, target=special)
    key = key_create("compare-rules")
    body = {"models": ["entry"], "messages": MESSAGES, "max_tokens": 4}

    events, run_id = _compare(gateway, key, body, **{"x-gateway-route": "background"})
    done = events[("entry", "done")]
    assert (done["served_model"], done["route"]) == ("special", "rule:background")
    records = wait_usage(lambda evs: any(e["run_id"] == run_id for e in evs))
    record = next(e for e in records if e["run_id"] == run_id)
    assert (record["model"], record["requested_model"], record["route"]) == ("special", "entry", "rule:background")
    assert [r["model"] for r in fresh_simulator.requests()] == ["sim-mini"]

    for headers in ({"x-gateway-route": "foreground"}, {}):
        done = _compare(gateway, key, body, **headers)[0][("entry", "done")]
        assert (done["served_model"], done["route"]) == ("entry", "default")
