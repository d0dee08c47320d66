"""`manage.py seed_demo`: the demo routing data, a superuser and a working demo key; safe to repeat."""

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from accounts.keys import key_matches
from accounts.models import ApiKey, Tier
from providers.models import Deployment, Model, Provider

pytestmark = pytest.mark.django_db

ADMIN_LINE_RE = re.compile(r"^Admin: +(\S+)  \(user admin, (.+)\)$")
KEY_LINE_RE = re.compile(r"^API key: +(sk-gw-\S+)$")


@pytest.fixture(autouse=True)
def demo_environment(monkeypatch, settings, tmp_path):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.VAR_DIR = tmp_path  # where the demo key's plaintext is kept
    monkeypatch.delenv("GATEWAY_SIMULATOR_URL", raising=False)
    monkeypatch.delenv("GATEWAY_PUBLIC_URL", raising=False)


def seed_demo() -> tuple[list[str], str, str]:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    lines = out.getvalue().splitlines()
    admin_match = ADMIN_LINE_RE.match(lines[-2])
    key_match = KEY_LINE_RE.match(lines[-1])
    assert admin_match and key_match, lines[-2:]
    return lines, admin_match.group(2), key_match.group(1)


def counts() -> dict:
    return {
        "providers": Provider.objects.count(),
        "models": Model.objects.count(),
        "deployments": Deployment.objects.count(),
        "tiers": Tier.objects.count(),
        "keys": ApiKey.objects.count(),
        "users": get_user_model().objects.count(),
    }


def test_demo_routing_data():
    seed_demo()
    sim = Provider.objects.get(name="sim")
    assert (sim.dialect, sim.base_url) == ("openai", "http://127.0.0.1:9100/v1")
    claude = Provider.objects.get(name="sim-anthropic")
    assert (claude.dialect, claude.base_url) == ("anthropic", "http://127.0.0.1:9100")

    def routes(name):
        return [
            (d.provider.name, d.upstream_model, d.priority)
            for d in Deployment.objects.filter(model__name=name).order_by("priority")
        ]

    assert routes("sim-fast") == [("sim", "sim-echo", 0)]
    assert routes("sim-slow") == [("sim", "sim-echo?tokens=60&interval_ms=50", 0)]
    assert routes("sim-claude") == [("sim-anthropic", "sim-echo", 0)]
    assert routes("sim-failover") == [("sim", "sim-echo?fail=500", 0), ("sim", "sim-echo", 1)]

    free = Tier.objects.get(name="free")
    assert (free.rpm, free.tpm, free.max_concurrent, free.daily_tokens, free.max_output_tokens) == (
        60,
        100000,
        5,
        1000000,
        4096,
    )
    pro = Tier.objects.get(name="pro")
    assert (pro.rpm, pro.tpm, pro.max_concurrent, pro.daily_tokens, pro.max_output_tokens) == (
        600,
        None,
        50,
        None,
        None,
    )


def test_first_run_creates_the_superuser_and_prints_its_password_once():
    lines, password_note, _key = seed_demo()
    assert password_note.startswith("password ")
    password = password_note.removeprefix("password ")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password(password)
    assert sum(password in line for line in lines) == 1

    lines, password_note, _key = seed_demo()
    assert password_note == "password unchanged"
    assert any("changepassword admin" in line for line in lines)
    assert all(password not in line for line in lines)
    admin.refresh_from_db()
    assert admin.check_password(password)


def test_repeated_runs_keep_counts_and_the_demo_key():
    _lines, _password, first_key = seed_demo()
    after_first = counts()
    _lines, _password, second_key = seed_demo()

    assert counts() == after_first
    assert after_first == {"providers": 2, "models": 6, "deployments": 7, "tiers": 3, "keys": 1, "users": 1}
    demo = ApiKey.objects.get(name="demo")
    assert demo.owner.username == "admin"
    assert demo.tier.name == "pro"
    assert key_matches(second_key, demo.key_hash)
    assert first_key == second_key


def test_other_keys_of_admin_survive_a_rerun():
    seed_demo()
    other = ApiKey.objects.create(
        owner=get_user_model().objects.get(username="admin"),
        tier=Tier.objects.get(name="free"),
        name="not-demo",
        key_hash="0" * 64,
        prefix="sk-gw-000000",
    )
    seed_demo()
    assert ApiKey.objects.filter(pk=other.pk).exists()
    assert ApiKey.objects.filter(name="demo").count() == 1


def test_urls_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GATEWAY_SIMULATOR_URL", "http://sim.example.com:9999/")
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "https://gw.example.com")
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert Provider.objects.get(name="sim").base_url == "http://sim.example.com:9999/v1"
    assert Provider.objects.get(name="sim-anthropic").base_url == "http://sim.example.com:9999"
    lines = out.getvalue().splitlines()
    assert lines[-3].startswith("Playground: https://gw.example.com/playground/")
    assert lines[-2].startswith("Admin:      https://gw.example.com/admin/  (user admin, ")
