"""History is never lost with what it belongs to: deleting a team keeps its usage records (their team nulled)
and its keys' daily totals; a user with keys and a key with daily totals cannot be deleted (admin says why,
no server error); revoking is how a key ends, and its records stay."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db.models import ProtectedError
from django.urls import reverse

from accounts.models import ApiKey, Budget, Team, Tier, UsageDaily, UsageRecord
from accounts.services import api_key_issue, api_key_revoke

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def spending(admin_user):
    """A team with a budget, a member whose key in the team has spent: records and a daily total."""
    team = Team.objects.create(name="research")
    member = get_user_model().objects.create_user("carol")
    team.members.add(member)
    api_key = api_key_issue(owner=member, tier=Tier.objects.create(name="free"), name="carol-key", team=team).api_key
    Budget.objects.create(scope="team", team=team, period="month", amount=Decimal("5"))
    for index in range(3):
        UsageRecord.objects.create(
            request_id=f"spent-{index}",
            api_key=api_key,
            user=member,
            team=team,
            model="m1",
            endpoint="chat.completions",
            status_code=200,
            cost=Decimal("0.5"),
            created_at=datetime.now(UTC),
        )
    UsageDaily.objects.create(
        date=datetime.now(UTC).date(), api_key=api_key, model="m1", requests=3, cost=Decimal("1.5")
    )
    return {"team": team, "member": member, "api_key": api_key}


def test_deleting_a_team_in_admin_keeps_its_usage_records_and_rollups(admin_client, spending):
    team, api_key = spending["team"], spending["api_key"]
    delete_url = reverse("admin:accounts_team_delete", args=[team.pk])
    assert admin_client.get(delete_url).status_code == 200
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302

    assert not Team.objects.exists()
    assert not Budget.objects.exists()  # the team's budgets go with it
    records = UsageRecord.objects.order_by("request_id")
    assert [(r.request_id, r.team_id, r.api_key_id, r.cost) for r in records] == [
        (f"spent-{index}", None, api_key.pk, Decimal("0.5")) for index in range(3)
    ]
    api_key.refresh_from_db()
    assert api_key.team is None and api_key.enabled
    assert UsageDaily.objects.get().cost == Decimal("1.5")


def test_a_user_with_keys_cannot_be_deleted_and_admin_says_why(admin_client, spending):
    member = spending["member"]
    with pytest.raises(ProtectedError):
        member.delete()

    delete_url = reverse("admin:auth_user_delete", args=[member.pk])
    page = admin_client.get(delete_url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "would require deleting the following protected related objects" in html
    assert "carol-key" in html
    assert "permission to delete" not in html  # the reason is the history, not a missing permission
    assert "Deactivate the user instead" in html
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 200  # the same explanation, not a 500

    bulk = admin_client.post(
        reverse("admin:auth_user_changelist"),
        {"action": "delete_selected", "_selected_action": [member.pk], "post": "yes"},
    )
    assert bulk.status_code == 200
    assert "protected related objects" in bulk.content.decode()
    assert get_user_model().objects.filter(pk=member.pk).exists()
    assert UsageRecord.objects.filter(user=member).count() == 3


def test_a_key_with_rollups_cannot_be_deleted_revoking_keeps_its_history(spending):
    api_key = spending["api_key"]
    with pytest.raises(ProtectedError):
        api_key.delete()
    with pytest.raises(ProtectedError):
        ApiKey.objects.filter(pk=api_key.pk).delete()

    api_key_revoke(api_key=api_key)
    api_key.refresh_from_db()
    assert not api_key.enabled
    assert UsageRecord.objects.filter(api_key=api_key).count() == 3
    assert UsageDaily.objects.get(api_key=api_key).cost == Decimal("1.5")


def test_a_user_whose_keys_are_gone_can_be_deleted_and_their_records_stay(admin_client):
    """Records of a user without keys (the key had no rollups and was deleted) keep their rows."""
    user = get_user_model().objects.create_user("dave")
    UsageRecord.objects.create(
        request_id="dave-1",
        user=user,
        model="m1",
        endpoint="chat.completions",
        status_code=200,
        cost=Decimal("0.25"),
        created_at=datetime.now(UTC),
    )
    delete_url = reverse("admin:auth_user_delete", args=[user.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302
    assert UsageRecord.objects.get(request_id="dave-1").user is None
