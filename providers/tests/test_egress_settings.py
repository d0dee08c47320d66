"""A provider's egress settings where ops write them: the proxy URL (write-only, encrypted, never shown with
its credentials), the CA bundle and client certificate checked as they are saved, per-deployment prices and
total timeout, in admin and in the YAML import."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from providers.egress import ca_bundle_problem, client_certificate_problem, proxy_url_problem
from providers.models import Deployment, Model, Provider
from providers.tests.test_admin import provider_post_data
from tests.support.pki import CertificateAuthority

pytestmark = pytest.mark.django_db

PROXY = "http://egress-user:proxy-secret-4711@proxy.internal:3128"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="module")
def pki():
    authority = CertificateAuthority()
    return {"ca": authority.cert_pem, "client": authority.client(), "other": CertificateAuthority().client()}


def test_proxy_urls_are_checked_without_quoting_their_credentials():
    assert proxy_url_problem(PROXY) is None
    assert proxy_url_problem("https://proxy.internal") is None
    for bad in ("socks5://u:proxy-secret-4711@h:1", "http://:proxy-secret-4711@/", "http://h:3128/path", "h:3128"):
        problem = proxy_url_problem(bad)
        assert problem and "proxy-secret-4711" not in problem, bad


def test_tls_material_is_checked(pki):
    assert ca_bundle_problem(pki["ca"]) is None
    assert "no PEM certificate" in ca_bundle_problem("not a certificate")
    client = pki["client"]
    assert client_certificate_problem(client.cert_pem, client.key_pem) is None
    assert client_certificate_problem("", "") is None
    assert "needs its private key" in client_certificate_problem(client.cert_pem, "")
    assert "do not load together" in client_certificate_problem(client.cert_pem, pki["other"].key_pem)


def test_admin_stores_the_proxy_and_client_key_encrypted_and_never_shows_them(admin_client, pki):
    client = pki["client"]
    data = provider_post_data(
        proxy_url=PROXY, ca_bundle=pki["ca"], client_cert=client.cert_pem, client_key=client.key_pem
    )
    response = admin_client.post(reverse("admin:providers_provider_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider = Provider.objects.get(name="acme")
    assert provider.proxy_url == PROXY and provider.client_key == client.key_pem.strip()
    assert "proxy-secret-4711" not in provider.proxy_url_encrypted
    assert "PRIVATE KEY" not in provider.client_key_encrypted
    page = admin_client.get(reverse("admin:providers_provider_change", args=[provider.pk])).content.decode()
    assert "http://proxy.internal:3128" in page
    for secret in ("proxy-secret-4711", "egress-user", provider.proxy_url_encrypted, client.key_pem.splitlines()[1]):
        assert secret not in page

    # Saved again with the write-only fields blank: both are kept.
    data.update(proxy_url="", client_key="")
    response = admin_client.post(reverse("admin:providers_provider_change", args=[provider.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.proxy_url == PROXY and provider.client_key == client.key_pem.strip()

    data.update(clear_proxy_url="on", clear_client_certificate="on")
    response = admin_client.post(reverse("admin:providers_provider_change", args=[provider.pk]), data)
    assert response.status_code == 302
    provider.refresh_from_db()
    assert (provider.proxy_url, provider.client_cert, provider.client_key) == ("", "", "")


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"proxy_url": "socks5://u:proxy-secret-4711@h:1"}, "proxy_url", "must start with http:// or https://"),
        ({"ca_bundle": "hello"}, "ca_bundle", "holds no PEM certificate"),
        ({"client_cert": "CERT"}, "client_cert", "needs its private key"),
    ],
)
def test_admin_names_what_is_wrong(admin_client, fields, field, message):
    response = admin_client.post(reverse("admin:providers_provider_add"), provider_post_data(**fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field]), errors
    assert "proxy-secret-4711" not in response.content.decode()


def test_yaml_imports_deployment_prices_timeouts_and_egress(tmp_path, pki, monkeypatch):
    ca_file = tmp_path / "corp-ca.pem"
    ca_file.write_text(pki["ca"])
    (tmp_path / "client.pem").write_text(pki["client"].cert_pem)
    (tmp_path / "client.key").write_text(pki["client"].key_pem)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
providers:
  - name: corp
    base_url: https://api.example.com/v1
    proxy_url: "{PROXY}"
    ca_bundle_file: {ca_file}
    client_cert_file: {tmp_path / "client.pem"}
    client_key_file: {tmp_path / "client.key"}
models:
  - name: priced
    input_price_per_million: 3
    output_price_per_million: 15
    cache_write_price_per_million: 3.75
    max_output_tokens: 8192
    deployments:
      - {{provider: corp, upstream_model: priced-a, timeout_total: 90, input_price_per_million: 2.5}}
"""
    )
    call_command("import_gateway_config", str(config))
    provider = Provider.objects.get(name="corp")
    assert provider.proxy_url == PROXY and "proxy-secret-4711" not in provider.proxy_url_encrypted
    assert provider.ca_bundle == pki["ca"] and provider.client_key == pki["client"].key_pem
    model = Model.objects.get(name="priced")
    assert (model.cache_write_price_per_million, model.max_output_tokens) == (Decimal("3.75"), 8192)
    deployment = Deployment.objects.get(model=model)
    assert (deployment.timeout_total, deployment.input_price_per_million) == (90.0, Decimal("2.5"))
    assert deployment.output_price_per_million is None

    config.write_text(
        """
providers:
  - {name: corp, base_url: "https://api.example.com/v1", proxy_url: "ftp://u:proxy-secret-4711@h:21"}
"""
    )
    with pytest.raises(CommandError) as failed:
        call_command("import_gateway_config", str(config))
    assert "proxy_url" in str(failed.value) and "proxy-secret-4711" not in str(failed.value)
