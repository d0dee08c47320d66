"""How upstream connections leave the gateway, over loopback with real servers: through a real forward
proxy (proxy.py: absolute-form for http, CONNECT for https) that alone resolves the upstream's name, the
environment's HTTP(S)_PROXY / NO_PROXY and a provider's own proxy; TLS trust from the system store,
SSL_CERT_FILE or a provider's CA bundle; a client certificate for an mTLS upstream; happy eyeballs past a
blackholed address; and the address policy applied to the target, not the proxy."""

import asyncio
import contextlib
import socket
import time

import httpx
import pytest

from providers.routing import ProviderRoute
from providers.upstream import upstream_body_read, upstream_clients_close, upstream_open
from providers.upstream_policy import AddressRefused, UpstreamResolver
from providers.upstream_transport import HAPPY_EYEBALLS_DELAY, UpstreamTransport
from tests.support.forward_proxy import forward_proxy_factory  # noqa: F401 - fixture
from tests.support.pki import CertificateAuthority
from tests.support.ports import free_port
from tests.support.raw_upstream import RawUpstream, answer_each

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HOST = "upstream.test"  # resolved by the test proxy only
_ids = iter(range(70_000, 80_000))


def route(base_url: str, **fields) -> ProviderRoute:
    """A provider of its own (a fresh id: a fresh client) with these egress fields."""
    return ProviderRoute(
        id=next(_ids),
        name="egress",
        dialect="openai",
        base_url=base_url,
        api_key="sk-test",
        extra_headers=(),
        timeout_connect=2.0,
        timeout_read=5.0,
        max_connections=4,
        **fields,
    )


async def get(provider: ProviderRoute, url: str) -> tuple[int, bytes]:
    response = await upstream_open(provider, url, b"{}", {"content-type": "application/json"})
    return response.status_code, await upstream_body_read(response)


async def served(proxy, needle: str) -> int:
    """Requests the proxy logged with `needle`, once the clients' kept-alive connections to it are closed
    (it logs a connection when it ends)."""
    await upstream_clients_close()
    await asyncio.sleep(0.5)
    return proxy.served(needle)


@pytest.fixture(autouse=True)
async def close_clients(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    yield
    await upstream_clients_close()


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def tls_server(authority, tmp_path):
    """A server context for upstream.test, localhost and 127.0.0.1, signed by the test CA."""
    return authority.server_context(authority.server(HOST, "localhost", "127.0.0.1"), tmp_path)


# Forward proxies -------------------------------------------------------------------------------------


async def test_an_http_upstream_only_the_proxy_can_reach_is_served_through_the_providers_proxy(
    forward_proxy_factory,  # noqa: F811
):
    async with RawUpstream(answer_each(OK)) as up:
        proxy = forward_proxy_factory({HOST: "127.0.0.1"})
        url = f"http://{HOST}:{up.port}/v1/chat/completions"
        with pytest.raises(httpx.ConnectError):
            await get(route(f"http://{HOST}:{up.port}/v1"), url)
        assert await get(route(f"http://{HOST}:{up.port}/v1", proxy_url=proxy.url), url) == (200, b"ok")
    # Absolute-form through the proxy, which forwarded it in origin-form.
    assert await served(proxy, f"POST {HOST}:{up.port}/v1/chat/completions") == 1
    assert up.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


async def test_an_https_upstream_is_tunnelled_with_connect_and_verified_end_to_end(
    forward_proxy_factory,  # noqa: F811
    authority,
    tls_server,
):
    async with RawUpstream(answer_each(OK), tls=tls_server) as up:
        proxy = forward_proxy_factory({HOST: "127.0.0.1"})
        url = f"https://{HOST}:{up.port}/v1/chat/completions"
        provider = route(f"https://{HOST}:{up.port}/v1", proxy_url=proxy.url, ca_bundle=authority.cert_pem)
        for _ in range(3):
            assert await get(provider, url) == (200, b"ok")
        # The tunnel's TLS is checked against the upstream's name: without the CA, refused.
        untrusted = route(f"https://{HOST}:{up.port}/v1", proxy_url=proxy.url)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(untrusted, url)
    assert await served(proxy, f"CONNECT {HOST}:{up.port}") == 2  # one kept-alive tunnel, one refused
    assert up.connections == 1 and len(up.requests) == 3


async def test_the_environment_proxy_applies_and_no_proxy_bypasses_it(
    forward_proxy_factory,  # noqa: F811
    monkeypatch,
):
    async with RawUpstream(answer_each(OK)) as up:
        proxy = forward_proxy_factory({HOST: "127.0.0.1"})
        url = f"http://{HOST}:{up.port}/v1/chat/completions"
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        assert await get(route(f"http://{HOST}:{up.port}/v1"), url) == (200, b"ok")
        # HTTPS_PROXY only: an http upstream goes direct (and cannot resolve the name).
        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with pytest.raises(httpx.ConnectError):
            await get(route(f"http://{HOST}:{up.port}/v1"), url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,.test")
        with pytest.raises(httpx.ConnectError):
            await get(route(f"http://{HOST}:{up.port}/v1"), url)
    assert await served(proxy, HOST) == 1


async def test_the_providers_proxy_wins_over_the_environment(forward_proxy_factory, monkeypatch):  # noqa: F811
    async with RawUpstream(answer_each(OK)) as up:
        proxy = forward_proxy_factory({HOST: "127.0.0.1"})
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        monkeypatch.setenv("NO_PROXY", HOST)
        provider = route(f"http://{HOST}:{up.port}/v1", proxy_url=proxy.url)
        assert await get(provider, f"http://{HOST}:{up.port}/v1/x") == (200, b"ok")
    assert await served(proxy, HOST) == 1


async def test_proxy_credentials_are_sent_and_never_shown(forward_proxy_factory):  # noqa: F811
    async with RawUpstream(answer_each(OK)) as up:
        proxy = forward_proxy_factory({HOST: "127.0.0.1"}, user="egress", password="pr0xy-s3cret")
        url = f"http://{HOST}:{up.port}/v1/x"
        assert await get(route(url, proxy_url=proxy.url_with_credentials), url) == (200, b"ok")
        wrong = proxy.url_with_credentials.replace("pr0xy-s3cret", "wr0ng-s3cret")
        # proxy.py answers 407 to a request it does not accept.
        status, _ = await get(route(url, proxy_url=wrong), url)
        assert status == 407
    https_url = f"https://{HOST}:{up.port}/v1/x"
    with pytest.raises(httpx.ProxyError) as refused:
        await get(route(https_url, proxy_url=wrong), https_url)
    assert "407" in str(refused.value) and proxy.url in str(refused.value)
    assert "wr0ng-s3cret" not in str(refused.value) and "egress:" not in str(refused.value)
    assert len(up.requests) == 1


async def test_the_address_policy_checks_the_target_not_the_proxy(forward_proxy_factory, settings):  # noqa: F811
    """Loopback upstreams refused: a proxy on loopback (named, so the resolver sees it) still carries
    requests to a name it resolves, and a metadata target is refused before anything is sent."""
    settings.DEBUG = False
    settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    async with RawUpstream(answer_each(OK)) as up:
        proxy = forward_proxy_factory({HOST: "127.0.0.1"})
        named_proxy = proxy.url.replace("127.0.0.1", "localhost")
        url = f"http://{HOST}:{up.port}/v1/x"
        assert await get(route(url, proxy_url=named_proxy), url) == (200, b"ok")
        for target in ("http://169.254.169.254/latest/meta-data", "http://metadata.google.internal/v1"):
            with pytest.raises(AddressRefused, match="GATEWAY_ALLOW_PRIVATE_UPSTREAMS"):
                await get(route(target, proxy_url=named_proxy), target)
        # Without the proxy, a name resolving to loopback is refused as before.
        with pytest.raises(AddressRefused, match="resolves to"):
            await get(route(f"http://localhost:{up.port}/v1"), f"http://localhost:{up.port}/v1/x")
    assert await served(proxy, "169.254") == 0 and await served(proxy, "metadata") == 0
    assert len(up.requests) == 1


# TLS trust and client certificates ---------------------------------------------------------------


async def test_a_private_ca_upstream_is_refused_without_its_bundle_and_served_with_it(authority, tls_server):
    async with RawUpstream(answer_each(OK), tls=tls_server) as up:
        url = f"https://localhost:{up.port}/v1/x"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(route(url), url)
        assert await get(route(url, ca_bundle=authority.cert_pem), url) == (200, b"ok")
        # Another CA's bundle replaces the system store and does not trust this server either.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(route(url, ca_bundle=CertificateAuthority().cert_pem), url)
    assert len(up.requests) == 1


async def test_tls_settings_that_do_not_load_fail_the_providers_https_requests_as_connect_errors(caplog):
    url = f"https://localhost:{free_port()}/v1/x"
    broken = route(url, ca_bundle="-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    with pytest.raises(httpx.ConnectError, match="TLS settings of provider egress do not load"):
        await get(broken, url)
    assert "check its CA bundle, client certificate and client key" in caplog.text
    stranger = CertificateAuthority().client("no-key")
    no_key = route(url, client_cert=stranger.cert_pem)
    with pytest.raises(httpx.ConnectError, match="do not load"):
        await get(no_key, url)


async def test_ssl_cert_file_sets_the_default_trust(authority, tls_server, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    bundle.write_text(authority.cert_pem)
    async with RawUpstream(answer_each(OK), tls=tls_server) as up:
        url = f"https://localhost:{up.port}/v1/x"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(route(url), url)
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        assert await get(route(url), url) == (200, b"ok")


async def test_an_mtls_upstream_serves_only_a_client_with_its_certificate(authority, tmp_path):
    server = authority.server_context(authority.server(), tmp_path, require_client_cert=True)
    client = authority.client("gateway-egress")
    async with RawUpstream(answer_each(OK), tls=server) as up:
        url = f"https://localhost:{up.port}/v1/x"
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await get(route(url, ca_bundle=authority.cert_pem), url)
        other = CertificateAuthority().client("stranger")
        stranger = route(url, ca_bundle=authority.cert_pem, client_cert=other.cert_pem, client_key=other.key_pem)
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await get(stranger, url)
        mutual = route(url, ca_bundle=authority.cert_pem, client_cert=client.cert_pem, client_key=client.key_pem)
        assert await get(mutual, url) == (200, b"ok")
    assert len(up.requests) == 1


# Happy eyeballs and DNS -----------------------------------------------------------------------------


class TwoAddresses(UpstreamResolver):
    """The policy resolver, answering `dual.test` with a blackholed address first and a working one second."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__()
        self.answers = [first, second]
        self.lookups = 0

    async def _lookup(self, host, port, family):
        self.lookups += 1
        return [
            {"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 6, "flags": 0}
            for address in self.answers
        ]


@contextlib.contextmanager
def blackholed(host: str, port: int):
    """A listener on host:port that never accepts, its backlog full: the kernel drops the next SYN, so a
    connect there hangs (a blackholed address)."""
    with socket.socket() as listener:
        listener.bind((host, port))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((host, port))
                fillers.append(filler)
            yield
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize("delay", [HAPPY_EYEBALLS_DELAY, None], ids=["happy-eyeballs", "one-after-another"])
async def test_a_blackholed_first_address_does_not_hold_up_a_working_second_one(delay):
    connect = 3.0
    async with RawUpstream(answer_each(OK)) as up:
        with blackholed("127.0.0.2", up.port):
            transport = UpstreamTransport(
                max_connections=2, resolver=TwoAddresses("127.0.0.2", "127.0.0.1"), happy_eyeballs_delay=delay
            )
            timeouts = {"connect": connect, "read": 5.0, "pool": 1.0}
            started = time.monotonic()
            try:
                if delay is None:
                    # One address after the other: the first eats the whole connect timeout.
                    with pytest.raises(httpx.ConnectTimeout):
                        await transport.send("GET", f"http://dual.test:{up.port}/", [], b"", timeouts)
                    assert time.monotonic() - started >= connect * 0.9
                    return
                response = await transport.send("GET", f"http://dual.test:{up.port}/", [], b"", timeouts)
                elapsed = time.monotonic() - started
                assert await response.aread() == b"ok"
            finally:
                await transport.aclose()
    # The second address was tried after the happy-eyeballs delay, not after the connect timeout.
    assert elapsed < max(4 * delay, connect / 3), elapsed


async def test_addresses_are_kept_for_the_dns_cache_time_and_then_asked_again():
    resolver = TwoAddresses("127.0.0.1", "127.0.0.3")
    resolver._ttl = 0.3
    first = await resolver.resolve("dual.test", 80)
    assert await resolver.resolve("dual.test", 80) is first and resolver.lookups == 1
    await asyncio.sleep(0.35)
    await resolver.resolve("dual.test", 80)
    assert resolver.lookups == 2
