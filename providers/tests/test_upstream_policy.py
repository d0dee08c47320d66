"""The upstream address policy: refused base URLs at save time (model, admin, YAML import) and at
connect time (the resolver and the literal-address check, over a real gateway process), and
redirects from an upstream are never followed."""

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from providers.config_import import ConfigImportError, gateway_config_import
from providers.models import Provider
from providers.upstream_policy import UpstreamAddressRefused, UpstreamResolver, base_url_problem
from providers.upstream_transport import UpstreamTransport
from tests.support.data import key_create, model_create, provider_admin_form, provider_create
from tests.support.ports import free_port

REFUSED = [
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://169.254.10.1:8080/v1", "link-local"),
    ("http://[fd00:ec2::254]/v1", "cloud metadata"),
    ("http://[fe80::1]/v1", "link-local"),
    ("http://[::ffff:169.254.169.254]/v1", "cloud metadata"),
    ("http://0.0.0.0:9100/v1", "unspecified"),
    ("http://[::]:9100/v1", "unspecified"),
    ("http://100.100.100.200/v1", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1", "cloud metadata"),
    ("ftp://example.com/v1", "http or https"),
    ("file:///etc/passwd", "http or https"),
]
ALLOWED = [
    "https://api.openai.com/v1",
    "https://api.anthropic.com",
    "http://127.0.0.1:9100/v1",
    "http://[::1]:9100/v1",
    "http://localhost:11434/v1",
    "http://10.0.0.5:8000/v1",
    "http://192.168.1.20/v1",
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_base_urls_are_named_with_the_reason(url, reason):
    problem = base_url_problem(url)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("url", ALLOWED)
def test_public_private_network_and_loopback_urls_are_allowed(url):
    assert base_url_problem(url) is None


def test_allow_private_upstreams_lifts_the_address_rules_but_not_the_scheme(settings):
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = True
    assert base_url_problem("http://169.254.169.254/latest") is None
    assert base_url_problem("http://[fe80::1]/v1") is None
    assert "http or https" in base_url_problem("gopher://example.com/")


def test_loopback_follows_its_setting_outside_debug_and_is_always_allowed_in_debug(settings):
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    assert "loopback" in base_url_problem("http://127.0.0.1:9100/v1")
    assert "loopback" in base_url_problem("http://[::1]:9100/v1")
    settings.DEBUG = True
    assert base_url_problem("http://127.0.0.1:9100/v1") is None


@pytest.mark.django_db
def test_model_clean_refuses_a_metadata_base_url():
    provider = Provider(name="meta", base_url="http://169.254.169.254/v1")
    with pytest.raises(ValidationError) as excinfo:
        provider.full_clean()
    assert "base_url" in excinfo.value.message_dict
    assert "169.254.169.254 is a cloud metadata address" in excinfo.value.message_dict["base_url"][0]


@pytest.mark.django_db
def test_admin_form_refuses_a_link_local_base_url_with_a_message(admin_client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    form = provider_admin_form("", name="linklocal", base_url="http://[fe80::1]:8080/v1")
    response = admin_client.post(reverse("admin:providers_provider_add"), form)
    assert response.status_code == 200
    assert "fe80::1 is a link-local address" in response.content.decode()
    assert not Provider.objects.filter(name="linklocal").exists()

    form["base_url"] = "https://api.example.com/v1"
    assert admin_client.post(reverse("admin:providers_provider_add"), form).status_code == 302
    assert Provider.objects.filter(name="linklocal").exists()


@pytest.mark.django_db
def test_yaml_import_refuses_a_metadata_base_url_and_writes_nothing():
    text = "providers:\n  - {name: meta, base_url: 'http://169.254.169.254/v1', api_key: sk-upstream-meta-0123}\n"
    with pytest.raises(ConfigImportError) as excinfo:
        gateway_config_import(data_text=text, source_name="gateway.yaml")
    message = str(excinfo.value)
    assert "gateway.yaml" in message and "cloud metadata address" in message
    assert "sk-upstream-meta-0123" not in message
    assert not Provider.objects.exists()


async def test_resolver_refuses_a_name_that_resolves_to_a_forbidden_address(settings):
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    with pytest.raises(UpstreamAddressRefused) as excinfo:
        await UpstreamResolver().resolve("localhost", 80)
    assert "upstream host localhost resolves to" in str(excinfo.value)
    assert isinstance(excinfo.value, OSError)

    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = True
    results = await UpstreamResolver().resolve("localhost", 80)
    assert results and all(r["port"] == 80 for r in results)


async def test_cached_answers_are_checked_again(settings):
    """The resolver keeps the addresses, not the verdict: a setting turned off applies to the next connection."""
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = True
    resolver = UpstreamResolver()
    assert await resolver.resolve("localhost", 443)
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    with pytest.raises(UpstreamAddressRefused):
        await resolver.resolve("localhost", 443)
    with pytest.raises(UpstreamAddressRefused, match="169.254.169.254 is a cloud metadata address"):
        await resolver.resolve("169.254.169.254", 80)


async def test_a_refused_address_reaches_the_caller_as_a_connect_error(settings, caplog):
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    transport = UpstreamTransport(max_connections=2, resolver=UpstreamResolver())
    timeouts = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
    try:
        with caplog.at_level(logging.WARNING, logger="providers.upstream_policy"):
            with pytest.raises(httpx.ConnectError, match="upstream host localhost resolves to"):
                await transport.send("GET", f"http://localhost:{free_port()}/v1/models", [], b"", timeouts)
        assert "upstream address refused: host localhost resolves to" in caplog.text
        assert transport.busy == 0
    finally:
        await transport.aclose()


def chat(gateway_url: str, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


@pytest.mark.django_db(transaction=True)
def test_gateway_refuses_loopback_upstreams_at_connect_time_when_the_policy_says_so(
    gateway_factory, fresh_simulator, settings
):
    port = fresh_simulator.url.rsplit(":", 1)[1]
    by_name = provider_create("by-name", f"http://localhost:{port}/v1")
    by_address = provider_create("by-address", f"http://127.0.0.1:{port}/v1")
    model_create("via-name", [(by_name, "sim-echo", 0)])
    model_create("via-address", [(by_address, "sim-echo", 0)])
    key = key_create("policy")
    strict = gateway_factory(
        DJANGO_DEBUG="False",
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        DJANGO_SECURE_SSL_REDIRECT="False",
        GATEWAY_ALLOW_LOOPBACK_UPSTREAMS="False",
    )
    for model in ("via-name", "via-address"):
        response = chat(strict.url, key, model)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["message"]
    assert fresh_simulator.requests(path="/v1/chat/completions") == []
    log = strict.log()
    assert "upstream address refused: host localhost resolves to" in log
    assert "upstream address refused: 127.0.0.1 is a loopback address" in log

    relaxed = gateway_factory()
    assert chat(relaxed.url, key, "via-address").status_code == 200
    assert len(fresh_simulator.requests(path="/v1/chat/completions")) == 1


class _Server:
    """A one-route loopback HTTP server in a thread, counting its requests."""

    def __init__(self, respond) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                server.hits += 1
                self.rfile.read(int(self.headers.get("content-length") or 0))
                respond(self)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.hits = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


TARGET_CONTENT = "REDIRECT-TARGET-CONTENT-7f3a"


@pytest.mark.django_db(transaction=True)
def test_an_upstream_redirect_is_not_followed(gateway_factory):
    def target_answer(handler):
        body = ('{"choices":[{"message":{"role":"assistant","content":"' + TARGET_CONTENT + '"}}]}').encode()
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    target = _Server(target_answer)

    def redirect_answer(handler):
        handler.send_response(302)
        handler.send_header("location", target.url + handler.path)
        handler.send_header("content-length", "0")
        handler.end_headers()

    redirector = _Server(redirect_answer)
    try:
        provider = provider_create("redirector", redirector.url + "/v1")
        model_create("redirected", [(provider, "any", 0)])
        key = key_create("redirect")
        gateway = gateway_factory()
        for stream in (False, True):
            body = {"model": "redirected", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code >= 400, response.text
            assert TARGET_CONTENT not in response.text
        assert redirector.hits == 2
        assert target.hits == 0
    finally:
        redirector.close()
        target.close()
