"""One way out for the relay and the health probe: a provider reachable only through a forward proxy (its
own, or the environment's HTTP_PROXY) is up for the probe and served by the relay; one whose private CA the
gateway was not given is down for the probe and refused by the relay, until its CA bundle is set."""

import time

import httpx
import orjson
import pytest

from providers.health import provider_health_check
from providers.models import Provider
from tests.support.data import key_create, model_create, provider_create
from tests.support.forward_proxy import forward_proxy_factory  # noqa: F401 - fixture
from tests.support.pki import CertificateAuthority
from tests.support.raw_upstream import RawUpstreamThread
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "upstream.test"  # resolved by the test proxy only
MESSAGES = [{"role": "user", "content": "hello"}]


def chat(gateway_url: str, key: str, model: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": model, "messages": MESSAGES},
            headers={"authorization": f"Bearer {key}"},
        )


def test_a_provider_only_its_proxy_reaches_is_up_for_the_probe_and_served_by_the_relay(
    gateway,
    gateway_factory,
    fresh_simulator,
    forward_proxy_factory,  # noqa: F811
    monkeypatch,
):
    proxy = forward_proxy_factory({HOST: "127.0.0.1"})
    base = f"http://{HOST}:{fresh_simulator.url.rsplit(':', 1)[1]}/v1"
    direct = provider_create("direct-only", base)
    proxied = provider_create("via-proxy", base, proxy_url=proxy.url)
    model_create("through-proxy", [(proxied, "sim-echo", 0)])
    model_create("no-way-out", [(direct, "sim-echo", 0)])
    key = key_create("egress")

    assert provider_health_check(provider_id=proxied.pk).ok
    down = provider_health_check(provider_id=direct.pk)
    assert not down.ok and down.error.startswith("ConnectError")
    served = chat(gateway.url, key, "through-proxy")
    assert served.status_code == 200, served.text
    assert served.json()["choices"][0]["message"]["content"]
    assert chat(gateway.url, key, "no-way-out").status_code == 502
    assert [r["path"] for r in fresh_simulator.requests()] == ["/v1/models", "/v1/chat/completions"]

    # The environment's proxy does the same for a provider without one: the probe here, a gateway
    # started with HTTP_PROXY there.
    with monkeypatch.context() as environment:
        environment.setenv("HTTP_PROXY", proxy.url)
        assert provider_health_check(provider_id=direct.pk).ok
    with_env_proxy = gateway_factory(HTTP_PROXY=proxy.url)
    assert chat(with_env_proxy.url, key, "no-way-out").status_code == 200
    assert len(fresh_simulator.requests(path="/v1/chat/completions")) == 2
    assert len(fresh_simulator.requests(path="/v1/models")) == 2


COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "private",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "over tls"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)


async def openai_like(reader, writer, upstream) -> None:
    """A minimal OpenAI-compatible upstream: the model list and a fixed chat completion, kept alive."""
    while (raw := await upstream.request(reader)) is not None:
        body = b'{"object":"list","data":[]}' if b" /v1/models " in raw.split(b"\r\n", 1)[0] else COMPLETION
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()


def test_a_provider_whose_ca_is_missing_is_down_for_the_probe_and_refused_by_the_relay(gateway, tmp_path):
    authority = CertificateAuthority()
    server = authority.server_context(authority.server("localhost"), tmp_path)
    with RawUpstreamThread(openai_like, tls=server) as upstream:
        provider = provider_create("private-ca", f"https://localhost:{upstream.port}/v1")
        model_create("private", [(provider, "private-1", 0)])
        key = key_create("private-ca")

        down = provider_health_check(provider_id=provider.pk)
        assert not down.ok and "CERTIFICATE_VERIFY_FAILED" in down.error
        refused = chat(gateway.url, key, "private")
        assert refused.status_code == 502, refused.text
        assert upstream.requests == []

        provider = Provider.objects.get(pk=provider.pk)
        provider.ca_bundle = authority.cert_pem
        provider.save()
        assert provider_health_check(provider_id=provider.pk).ok

        def served() -> bool:
            response = chat(gateway.url, key, "private")
            return response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "over tls"

        started = time.monotonic()
        eventually(served, timeout=10, what="the relay trusting the provider's CA")
        assert time.monotonic() - started < 10
