"""`manage.py issue_key`: prints the plaintext once, on the last line, and stores only its hash."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.keys import key_looks_valid, key_matches
from accounts.models import ApiKey, Tier
from accounts.services import SERVICE_USERNAME

pytestmark = pytest.mark.django_db


@pytest.fixture
def tier():
    return Tier.objects.create(name="free", rpm=60)


def issue_key(*args: str) -> list[str]:
    out = StringIO()
    call_command("issue_key", *args, stdout=out)
    return out.getvalue().splitlines()


def test_last_line_is_the_key_and_it_verifies_against_the_stored_hash(tier):
    lines = issue_key("--tier", "free", "--name", "ci")
    plaintext = lines[-1]
    assert key_looks_valid(plaintext)
    assert plaintext == plaintext.strip()

    api_key = ApiKey.objects.get()
    assert key_matches(plaintext, api_key.key_hash)
    assert (api_key.name, api_key.tier, api_key.expires_at, api_key.enabled) == ("ci", tier, None, True)
    assert all(plaintext not in line for line in lines[:-1])
    assert "'ci'" in lines[0] and "tier free" in lines[0]


def test_default_owner_is_the_service_user(tier):
    issue_key("--tier", "free", "--name", "ci")
    assert ApiKey.objects.get().owner.username == SERVICE_USERNAME


def test_owner_can_be_named(tier):
    user = get_user_model().objects.create_user(username="alice")
    lines = issue_key("--tier", "free", "--name", "alice-laptop", "--user", "alice")
    api_key = ApiKey.objects.get()
    assert api_key.owner == user
    assert "owner alice" in "\n".join(lines)


def test_each_run_issues_a_different_key(tier):
    first = issue_key("--tier", "free", "--name", "one")[-1]
    second = issue_key("--tier", "free", "--name", "two")[-1]
    assert first != second
    assert ApiKey.objects.count() == 2


def test_expiry_in_days(tier):
    issue_key("--tier", "free", "--name", "ci", "--expires-days", "30")
    expires_at = ApiKey.objects.get().expires_at
    assert abs(expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)


@pytest.mark.parametrize("days", ["0", "-3", "soon"])
def test_bad_expiry_is_rejected(tier, days):
    with pytest.raises(CommandError, match="expires-days"):
        issue_key("--tier", "free", "--name", "ci", "--expires-days", days)
    assert not ApiKey.objects.exists()


def test_unknown_tier_is_named(tier):
    with pytest.raises(CommandError) as excinfo:
        issue_key("--tier", "platinum", "--name", "ci")
    assert "unknown tier 'platinum'" in str(excinfo.value)
    assert "free" in str(excinfo.value)
    assert not ApiKey.objects.exists()


def test_unknown_user_is_named(tier):
    with pytest.raises(CommandError, match="unknown user 'mallory'"):
        issue_key("--tier", "free", "--name", "ci", "--user", "mallory")
    assert not ApiKey.objects.exists()


def test_tier_and_name_are_required(tier):
    with pytest.raises(CommandError, match="--name"):
        issue_key("--tier", "free")
    with pytest.raises(CommandError, match="blank"):
        issue_key("--tier", "free", "--name", "  ")
    assert not ApiKey.objects.exists()
