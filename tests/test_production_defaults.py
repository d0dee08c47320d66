"""A gateway started with nothing but the required secrets is safe to expose: DEBUG is off (a bad Host
gets no debug page), /metrics answers only clients on its own host unless a token is set, and the API
answers HTTPS requests with Strict-Transport-Security. `make` turns DEBUG on for development."""

import os
import subprocess
import sys

import httpx
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import ROOT, gateway_command, gateway_env
from tests.support.ports import free_port, stop_process, wait_http

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "production-like-secret-key-for-the-defaults-test-0123456789abcdef"
HSTS = "max-age=31536000; includeSubDomains; preload"
# uvicorn trusts X-Forwarded-* from a loopback peer (FORWARDED_ALLOW_IPS): what a proxy on the gateway's
# host sends for a client on the internet.
FROM_THE_INTERNET = {"X-Forwarded-For": "203.0.113.9"}
OVER_HTTPS = {"X-Forwarded-Proto": "https"}


@pytest.fixture
def start_gateway(redis_server, tmp_path):
    """A uvicorn gateway (as run_gateway serves) with the environment given and DJANGO_DEBUG left unset
    unless given: the settings' own default decides."""
    processes = []

    def start(**extra) -> str:
        env = gateway_env(redis_server, DJANGO_SECRET_KEY=SECRET, **extra)
        if "DJANGO_DEBUG" not in extra:
            env.pop("DJANGO_DEBUG", None)
        port = free_port()
        log = open(tmp_path / f"gateway-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(gateway_command("uvicorn", port), cwd=ROOT, env=env, stdout=log, stderr=log)
        log.close()
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", timeout=30, process=process)
        return url

    yield start
    for process in processes:
        stop_process(process)


def test_debug_is_off_unless_asked_for(tmp_path):
    script = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_DEBUG"}
    env.update(DJANGO_SETTINGS_MODULE="aigateway.settings", DJANGO_SECRET_KEY=SECRET)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.split()[-1:] == ["False"], run.stdout + run.stderr
    without_secret = {k: v for k, v in env.items() if k != "DJANGO_SECRET_KEY"}
    refused = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=without_secret, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "DJANGO_SECRET_KEY" in refused.stderr


@pytest.mark.parametrize(("environment", "expected"), [({}, "True"), ({"DJANGO_DEBUG": "False"}, "False")])
def test_make_turns_debug_on_for_development_unless_told_otherwise(environment, expected):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_DEBUG"}
    env.update(environment)
    run = subprocess.run(
        ["make", "-s", "--eval", "show-debug: ; @echo $$DJANGO_DEBUG", "show-debug"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.strip() == expected, run.stdout + run.stderr


def test_a_bad_host_gets_no_debug_page(start_gateway):
    url = start_gateway()
    for path in ("/admin/", "/admin/login/", "/playground/"):
        answer = httpx.get(url + path, headers={"Host": "evil.example"}, timeout=10)
        assert answer.status_code == 400, (path, answer.status_code)
        text = answer.text
        for leak in ("Traceback", "DisallowedHost", "settings.py", str(ROOT), "ALLOWED_HOSTS"):
            assert leak not in text, (path, leak)
        assert len(answer.content) < 200, text


def test_metrics_answer_only_this_host_without_a_token(start_gateway, fresh_simulator):
    sim = provider_create("secret-provider-name", fresh_simulator.openai_base)
    model_create("metrics-model", [(sim, "sim-echo", 0)])
    key = key_create("metrics")
    url = start_gateway()
    chat = {"model": "metrics-model", "messages": [{"role": "user", "content": "hi"}]}
    served = httpx.post(url + "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})
    assert served.status_code == 200, served.text
    local = httpx.get(url + "/metrics", timeout=10)
    assert local.status_code == 200 and "gateway_provider_up" in local.text
    remote = httpx.get(url + "/metrics", headers=FROM_THE_INTERNET, timeout=10)
    assert remote.status_code == 403
    assert "GATEWAY_METRICS_TOKEN" in remote.text and "secret-provider-name" not in remote.text
    assert "secret-provider-name" in local.text  # what the refusal keeps from the internet

    token_url = start_gateway(GATEWAY_METRICS_TOKEN="scrape-token-0123456789")
    assert httpx.get(token_url + "/metrics", timeout=10).status_code == 401  # a token binds local clients too
    with_token = {"Authorization": "Bearer scrape-token-0123456789", **FROM_THE_INTERNET}
    assert httpx.get(token_url + "/metrics", headers=with_token, timeout=10).status_code == 200

    debug_url = start_gateway(DJANGO_DEBUG="True")
    assert httpx.get(debug_url + "/metrics", headers=FROM_THE_INTERNET, timeout=10).status_code == 200


def test_api_answers_over_https_carry_hsts(start_gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("hsts-model", [(sim, "sim-echo", 0)])
    key = key_create("hsts")
    url = start_gateway()
    auth = {"Authorization": f"Bearer {key}"}
    chat = {"model": "hsts-model", "messages": [{"role": "user", "content": "hi"}]}
    health = httpx.get(url + "/health", headers=OVER_HTTPS, timeout=10)
    refused = httpx.post(url + "/v1/chat/completions", json=chat, headers=OVER_HTTPS, timeout=10)
    assert refused.status_code == 401
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**chat, "stream": True}, headers={**auth, **OVER_HTTPS}, timeout=30
    ) as streamed:
        assert streamed.status_code == 200
        body = b"".join(streamed.iter_bytes())
    assert b"[DONE]" in body
    for answer in (health, refused, streamed):
        assert answer.headers.get("strict-transport-security") == HSTS, answer.request.url
        assert len(answer.headers.get_list("strict-transport-security")) == 1
    # Plain HTTP never carries it (a browser must ignore it there), nor does a development gateway.
    plain = httpx.get(url + "/health", timeout=10)
    assert "strict-transport-security" not in plain.headers
    debug_url = start_gateway(DJANGO_DEBUG="True")
    assert "strict-transport-security" not in httpx.get(debug_url + "/health", headers=OVER_HTTPS).headers
