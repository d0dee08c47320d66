"""Rotating GATEWAY_PROVIDER_SECRET_KEY: a key list decrypts with every key, and
`manage.py rotate_provider_secrets` re-encrypts every stored secret under the first one."""

from io import StringIO

import pytest
from cryptography.fernet import InvalidToken
from django.core.management import CommandError, call_command

from providers.models import Provider
from providers.secrets import _fernet_for, secret_key_materials
from tests.support.data import provider_create

pytestmark = pytest.mark.django_db

OLD, NEW = "old-provider-secret-key-4d1f", "new-provider-secret-key-9a2c"
SECRETS = {"alpha": "sk-upstream-alpha-0f9e8d7c6b", "beta": "sk-upstream-beta-1a2b3c4d5e"}


def stored_token(name: str) -> str:
    return Provider.objects.get(name=name).api_key_encrypted


def decrypts_with(material: str, token: str) -> bool:
    try:
        _fernet_for(material).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def test_a_key_list_is_read_newest_first_and_defaults_to_the_secret_key(settings):
    settings.PROVIDER_SECRET_KEY = f" {NEW} , {OLD} ,"
    assert secret_key_materials() == (NEW, OLD)
    settings.PROVIDER_SECRET_KEY = ""
    assert secret_key_materials() == (settings.SECRET_KEY,)


def test_rotation_end_to_end(settings):
    settings.PROVIDER_SECRET_KEY = OLD
    for name, secret in SECRETS.items():
        provider_create(name, f"https://{name}.example.com/v1", api_key=secret)
    provider_create("keyless", "https://keyless.example.com/v1", api_key="")
    before = {name: stored_token(name) for name in SECRETS}
    assert all(decrypts_with(OLD, token) for token in before.values())

    settings.PROVIDER_SECRET_KEY = f"{NEW},{OLD}"
    for name, secret in SECRETS.items():
        assert Provider.objects.get(name=name).api_key == secret
    # New writes already use the first key.
    provider_create("gamma", "https://gamma.example.com/v1", api_key="sk-upstream-gamma-77aa88bb")
    assert decrypts_with(NEW, stored_token("gamma")) and not decrypts_with(OLD, stored_token("gamma"))

    out = StringIO()
    call_command("rotate_provider_secrets", stdout=out)
    assert "3 provider secret(s) re-encrypted" in out.getvalue()
    assert "re-encrypted: alpha" in out.getvalue()
    assert "keyless" not in out.getvalue()
    for secret in SECRETS.values():
        assert secret not in out.getvalue()

    settings.PROVIDER_SECRET_KEY = NEW
    for name, secret in SECRETS.items():
        provider = Provider.objects.get(name=name)
        assert provider.api_key == secret
        assert provider.api_key_encrypted != before[name]
        assert decrypts_with(NEW, provider.api_key_encrypted)
        assert not decrypts_with(OLD, provider.api_key_encrypted)
    assert Provider.objects.get(name="keyless").api_key_encrypted == ""

    # Running it again is harmless.
    call_command("rotate_provider_secrets", stdout=StringIO())
    assert Provider.objects.get(name="alpha").api_key == SECRETS["alpha"]


def test_a_secret_no_configured_key_decrypts_is_named_left_unchanged_and_fails_the_command(settings):
    settings.PROVIDER_SECRET_KEY = "a-key-nobody-remembers-3e3e"
    provider_create("orphan", "https://orphan.example.com/v1", api_key="sk-upstream-orphan-5c5c5c5c")
    orphan_token = stored_token("orphan")
    settings.PROVIDER_SECRET_KEY = OLD
    provider_create("fine", "https://fine.example.com/v1", api_key="sk-upstream-fine-6d6d6d6d")

    settings.PROVIDER_SECRET_KEY = f"{NEW},{OLD}"
    with pytest.raises(CommandError) as excinfo:
        call_command("rotate_provider_secrets", stdout=StringIO())
    message = str(excinfo.value)
    assert "orphan" in message and "do not decrypt with any key" in message
    assert "sk-upstream-orphan" not in message and orphan_token not in message
    assert stored_token("orphan") == orphan_token
    assert decrypts_with(NEW, stored_token("fine"))


def test_rotation_covers_the_proxy_url_and_the_client_key(settings):
    settings.PROVIDER_SECRET_KEY = OLD
    proxied = provider_create("proxied", "https://proxied.example.com/v1", api_key="")
    proxied.proxy_url = "http://egress:pr0xy-pass-7e7e@proxy.internal:3128"
    proxied.client_cert = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
    proxied.client_key = "-----BEGIN PRIVATE KEY-----\nclient-key-8f8f\n-----END PRIVATE KEY-----\n"
    proxied.save()
    before = Provider.objects.get(name="proxied")

    settings.PROVIDER_SECRET_KEY = f"{NEW},{OLD}"
    out = StringIO()
    call_command("rotate_provider_secrets", stdout=out)
    assert "re-encrypted: proxied" in out.getvalue()
    assert "pr0xy-pass" not in out.getvalue() and "client-key-8f8f" not in out.getvalue()

    settings.PROVIDER_SECRET_KEY = NEW
    after = Provider.objects.get(name="proxied")
    assert after.proxy_url == "http://egress:pr0xy-pass-7e7e@proxy.internal:3128"
    assert "client-key-8f8f" in after.client_key
    for column in ("proxy_url_encrypted", "client_key_encrypted"):
        assert getattr(after, column) != getattr(before, column)
        assert decrypts_with(NEW, getattr(after, column)) and not decrypts_with(OLD, getattr(after, column))
    assert after.api_key_encrypted == ""


def test_a_row_with_one_undecryptable_secret_is_left_whole(settings):
    settings.PROVIDER_SECRET_KEY = "a-key-nobody-remembers-3e3e"
    provider = provider_create("half", "https://half.example.com/v1", api_key="")
    provider.proxy_url = "http://proxy.internal:3128"
    provider.save()
    settings.PROVIDER_SECRET_KEY = OLD
    provider = Provider.objects.get(name="half")
    provider.api_key = "sk-upstream-half-9e9e9e9e"
    provider.save()
    before = Provider.objects.get(name="half")

    settings.PROVIDER_SECRET_KEY = f"{NEW},{OLD}"
    with pytest.raises(CommandError, match="half"):
        call_command("rotate_provider_secrets", stdout=StringIO())
    after = Provider.objects.get(name="half")
    assert (after.api_key_encrypted, after.proxy_url_encrypted) == (
        before.api_key_encrypted,
        before.proxy_url_encrypted,
    )
