"""Bad input gets an OpenAI-shaped error naming the problem, with the right status."""

import httpx
import openai
import pytest

from accounts.keys import key_generate
from accounts.models import ApiKey
from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo", 0)])
    return key_create("free")


def post(gateway, key, content, *, headers=None, raw=None):
    base = {"Authorization": f"Bearer {key}"} if key else {}
    base.update(headers or {})
    if raw is not None:
        return httpx.post(gateway.openai_base + "/chat/completions", content=raw, headers=base, timeout=10)
    return httpx.post(gateway.openai_base + "/chat/completions", json=content, headers=base, timeout=10)


def assert_error(response, status, *needles, code=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in error["message"], error["message"]
    if code:
        assert error["code"] == code
    assert "Traceback" not in response.text
    return error


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_json(gateway, key, raw, needle):
    assert_error(post(gateway, key, None, raw=raw, headers={"content-type": "application/json"}), 400, needle)


@pytest.mark.parametrize(
    ("body", "needle", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "'model' is required", "model"),
        ({"model": "", "messages": [{"role": "user", "content": "hi"}]}, "'model' is required", "model"),
        ({"model": "sim-fast"}, "'messages' is required", "messages"),
        ({"model": "sim-fast", "messages": []}, "at least one message", "messages"),
        ({"model": "sim-fast", "messages": "hi"}, "must be an array", "messages"),
        ({"model": "sim-fast", "messages": ["hi"]}, "'messages[0]' must be an object", "messages[0]"),
        ({"model": "sim-fast", "messages": [{"content": "hi"}]}, "'messages[0].role' is required", "messages[0].role"),
        ({"model": "sim-fast", "messages": [{"role": "user", "content": 5}]}, "'messages[0].content'", None),
        ({"model": "sim-fast", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "'stream'", "stream"),
        ({"model": "sim-fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "'max_tokens'", None),
        ({"model": 12, "messages": [{"role": "user", "content": "x"}]}, "'model'", "model"),
    ],
)
def test_invalid_fields(gateway, key, body, needle, param):
    error = assert_error(post(gateway, key, body), 400, needle)
    if param:
        assert error["param"] == param


def test_auth_errors(gateway, key):
    body = {"model": "sim-fast", "messages": [{"role": "user", "content": "x"}]}
    assert_error(post(gateway, None, body), 401, "no API key", code="missing_api_key")
    assert_error(post(gateway, key_generate(), body), 401, "invalid", code="invalid_api_key")
    response = post(gateway, key + "x", body)
    assert_error(response, 401, code="invalid_api_key")
    assert key not in response.text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.openai_base, api_key=key_generate(), max_retries=0).models.list()


def test_disabled_key_is_refused_within_seconds(gateway, key):
    body = {"model": "sim-fast", "messages": [{"role": "user", "content": "x"}]}
    assert post(gateway, key, body).status_code == 200
    api_key = ApiKey.objects.get()
    api_key.enabled = False
    api_key.save()
    import time

    deadline = time.monotonic() + 5
    while post(gateway, key, body).status_code == 200:
        assert time.monotonic() < deadline, "disabled key still accepted after 5 s"
        time.sleep(0.1)
    assert_error(post(gateway, key, body), 401, code="invalid_api_key")


def test_unknown_model_404(gateway, key):
    error = assert_error(
        post(gateway, key, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        404,
        "'nope' does not exist",
        code="model_not_found",
    )
    assert error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )


def test_too_large_413(gateway_factory, key):
    gw = gateway_factory(GATEWAY_MAX_BODY_BYTES="2000")
    body = {"model": "sim-fast", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(post(gw, key, body), 413, "exceeds the limit of 2000 bytes", code="request_too_large")


def test_all_deployments_failing_is_502_in_openai_shape(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-down", [(sim, "sim-echo?fail=500", 0)])
    key = key_create("free")
    error = assert_error(
        post(gateway, key, {"model": "sim-down", "messages": [{"role": "user", "content": "x"}]}),
        502,
        "all deployments of 'sim-down' failed",
        code="upstream_unavailable",
    )
    assert error["type"] == "server_error"


def test_upstream_client_error_passes_through(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-bad", [(sim, "sim-echo?fail=400", 0)])
    key = key_create("free")
    response = post(gateway, key, {"model": "sim-bad", "messages": [{"role": "user", "content": "x"}]})
    assert_error(response, 400)
    # A 400 is the request's fault: no failover, tried once.
    assert len(fresh_simulator.requests(model="sim-echo?fail=400")) == 1


def test_wrong_method(gateway, key):
    response = httpx.get(gateway.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 405, "use POST")
