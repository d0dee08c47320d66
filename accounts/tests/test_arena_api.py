"""GET /api/v1/arena/leaderboard over the Django test client: a key sees the overall board and its owner's teams'
(by name or id), another team is a 404 in the API's error shape; a browser session sees a user's teams, staff every
team; no key and no session is a 401; the key's calls share the management API's throttle."""

import pytest
from django.contrib.auth import get_user_model

from accounts.arena import arena_answer_record, arena_battle_start, arena_vote_cast
from accounts.models import Team, Tier
from accounts.services import api_key_issue

pytestmark = pytest.mark.django_db

URL = "/api/v1/arena/leaderboard"


@pytest.fixture
def world():
    User = get_user_model()
    ann = User.objects.create_user("ann", password="pw-ann-123456")
    ben = User.objects.create_user("ben", password="pw-ben-123456")
    boss = User.objects.create_user("boss", password="pw-boss-123456", is_staff=True)
    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    red.members.add(ann)
    blue.members.add(ben)
    tier = Tier.objects.create(name="arena-api")
    key = api_key_issue(owner=ann, tier=tier, name="ann-key", team=red).plaintext
    for user, team, winner, times in [(ann, red, "m-one", 3), (ann, red, "m-two", 1), (ben, blue, "m-two", 2)]:
        for _ in range(times):
            battle = arena_battle_start(user_id=user.pk, team_id=team.pk, models=["m-one", "m-two"], prompt="p")
            for side in ("a", "b"):
                arena_answer_record(battle_id=battle.battle_id, side=side, request_id=f"r-{side}", ok=True)
            outcome = "a" if battle.model_a == winner else "b"
            arena_vote_cast(user_id=user.pk, battle_id=battle.battle_id, outcome=outcome)
    return {"ann": ann, "ben": ben, "boss": boss, "red": red, "blue": blue, "key": key}


def wins(body: dict) -> dict:
    return {row["model"]: (row["battles"], row["wins"]) for row in body["models"]}


def get(client, key=None, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.get(URL, params, headers=headers)


def test_a_key_sees_the_overall_board_and_its_owners_teams(client, world):
    overall = get(client, world["key"])
    by_name = get(client, world["key"], team="red")
    by_id = get(client, world["key"], team=str(world["red"].pk))

    assert overall.status_code == 200, overall.content
    assert overall.json()["team"] is None
    assert wins(overall.json()) == {"m-one": (6, 3), "m-two": (6, 3)}
    assert by_name.status_code == 200 and by_name.json() == by_id.json()
    body = by_name.json()
    assert body["team"] == "red" and wins(body) == {"m-one": (4, 3), "m-two": (4, 1)}
    assert set(body["models"][0]) == {"model", "battles", "wins", "ties", "bad", "rating", "ci_low", "ci_high"}
    assert body["models"][0]["model"] == "m-one"
    assert body["models"][0]["ci_low"] <= body["models"][0]["rating"] <= body["models"][0]["ci_high"]
    assert body["matrix"] == {"m-one": {"m-two": 0.75}, "m-two": {"m-one": 0.25}}


@pytest.mark.parametrize("team", ["blue", "blue-id", "nobody", "999999"])
def test_a_key_gets_a_404_for_a_team_that_is_not_its_owners(client, world, team):
    value = str(world["blue"].pk) if team == "blue-id" else team
    response = get(client, world["key"], team=value)

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "team_not_found" and error["type"] == "invalid_request_error"
    assert "m-two" not in response.content.decode()


def test_a_staff_session_sees_every_team_a_users_session_only_theirs(client, world):
    client.force_login(world["boss"])
    blue = client.get(URL, {"team": "blue"})
    assert blue.status_code == 200 and blue.json()["team"] == "blue"
    assert wins(blue.json()) == {"m-one": (2, 0), "m-two": (2, 2)}
    assert client.get(URL, {"team": "red"}).status_code == 200

    client.force_login(world["ben"])
    assert client.get(URL, {"team": "blue"}).status_code == 200
    assert client.get(URL, {"team": "red"}).status_code == 404
    assert wins(client.get(URL).json()) == {"m-one": (6, 3), "m-two": (6, 3)}


def test_no_key_and_no_session_is_a_401(client, world):
    response = client.get(URL)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_keys_calls_share_the_management_apis_throttle(client, world, settings):
    settings.GATEWAY_USAGE_API_RPM = 2
    responses = [get(client, world["key"]) for _ in range(3)]

    assert [response.status_code for response in responses] == [200, 200, 429]
    assert float(responses[2]["Retry-After"]) > 0
    assert responses[2].json()["error"]["type"] == "rate_limit_error"
