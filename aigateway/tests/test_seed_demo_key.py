"""`make run` (manage.py seed_demo) keeps the demo key across restarts: its plaintext lives only in var/demo-key,
every run prints the same working key, and the demo key's usage history (records, daily totals) is never
deleted. Only a lost file or a revoked key brings a new key, and the old one is revoked, not deleted."""

import re
import stat
from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.auth import key_context_load
from accounts.keys import key_hash
from accounts.models import ApiKey, UsageDaily, UsageRecord
from accounts.services import api_key_revoke

pytestmark = pytest.mark.django_db

KEY_LINE_RE = re.compile(r"^API key: +(sk-gw-\S+)$")


@pytest.fixture(autouse=True)
def demo_environment(monkeypatch, settings, tmp_path):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.delenv("GATEWAY_SIMULATOR_URL", raising=False)
    monkeypatch.delenv("GATEWAY_PUBLIC_URL", raising=False)


def seed_demo() -> tuple[str, str]:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    text = out.getvalue()
    match = KEY_LINE_RE.match(text.splitlines()[-1])
    assert match, text
    return match.group(1), text


def demo_spends(plaintext: str) -> ApiKey:
    """What traffic on the demo key leaves behind: a usage record and a daily total."""
    api_key = ApiKey.objects.get(key_hash=key_hash(plaintext))
    UsageRecord.objects.create(
        request_id=f"demo-{UsageRecord.objects.count()}",
        api_key=api_key,
        user=api_key.owner,
        model="sim-fast",
        endpoint="chat.completions",
        status_code=200,
        cost=Decimal("0.0001"),
        created_at=datetime.now(UTC),
    )
    daily, _ = UsageDaily.objects.get_or_create(date=datetime.now(UTC).date(), api_key=api_key, model="sim-fast")
    daily.requests += 1
    daily.cost += Decimal("0.0001")
    daily.save()
    return api_key


def test_a_restart_prints_the_same_working_key_and_keeps_its_history(settings):
    first, _ = seed_demo()
    demo_spends(first)
    key_file = settings.VAR_DIR / "demo-key"
    assert key_file.read_text().strip() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    second, text = seed_demo()

    assert second == first
    assert "is the one issued before" in text
    ctx = key_context_load(key_hash(second))
    assert ctx is not None and ctx.key_name == "demo" and ctx.tier_name == "pro"
    assert ApiKey.objects.filter(name="demo").count() == 1
    assert UsageRecord.objects.get().api_key.key_hash == key_hash(first)
    assert UsageDaily.objects.get().requests == 1
    # The plaintext is in var/demo-key and nowhere else under var/.
    holders = [p.name for p in settings.VAR_DIR.rglob("*") if p.is_file() and first in p.read_text(errors="replace")]
    assert holders == ["demo-key"]


def test_a_lost_key_file_brings_a_new_key_and_the_old_one_is_revoked_not_deleted(settings):
    first, _ = seed_demo()
    old = demo_spends(first)
    (settings.VAR_DIR / "demo-key").unlink()

    second, text = seed_demo()

    assert second != first
    assert "the previous one, whose plaintext was lost, is revoked" in text
    assert key_context_load(key_hash(second)) is not None
    assert key_context_load(key_hash(first)) is None
    old.refresh_from_db()
    assert not old.enabled
    assert UsageRecord.objects.get().api_key == old
    assert UsageDaily.objects.get().api_key == old
    assert (settings.VAR_DIR / "demo-key").read_text().strip() == second
    third, _ = seed_demo()
    assert third == second


def test_a_revoked_demo_key_is_replaced(settings):
    first, _ = seed_demo()
    demo_spends(first)
    api_key_revoke(api_key=ApiKey.objects.get(key_hash=key_hash(first)))

    second, _ = seed_demo()

    assert second != first
    assert key_context_load(key_hash(second)) is not None
    assert ApiKey.objects.filter(name="demo").count() == 2
    assert UsageDaily.objects.count() == 1
