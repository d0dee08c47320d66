"""The arena's browser endpoints (streaming.arena_views) over the Django test client with CSRF checks on: the vote a
page posts (its session and CSRF token, JSON in and out, the reveal), and the leaderboard page (login, teams, rows,
matrix, its Content-Security-Policy)."""

import re

import orjson
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.arena import arena_answer_record, arena_battle_start, arena_vote_cast
from accounts.models import ArenaVote, Team

pytestmark = pytest.mark.django_db

VOTE_URL = "/playground/arena/vote"
BOARD_URL = "/playground/leaderboard/"


@pytest.fixture
def ann():
    user = get_user_model().objects.create_user("ann", password="pw-ann-123456")
    Team.objects.create(name="red").members.add(user)
    return user


def finished_battle(user, team=None, models=("m-one", "m-two")):
    battle = arena_battle_start(user_id=user.pk, team_id=team and team.pk, models=list(models), prompt="Hello")
    for side in ("a", "b"):
        arena_answer_record(battle_id=battle.battle_id, side=side, request_id=f"req-{side}-{battle.battle_id}", ok=True)
    return battle


def browser(user) -> tuple[Client, str]:
    """A logged-in client that checks CSRF like a browser session, and the token the page would send."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get(BOARD_URL)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    return client, token


def post(client, body, token=None):
    headers = {"X-CSRFToken": token} if token else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(VOTE_URL, data, content_type="application/json", headers=headers)


def test_the_page_votes_with_its_session_and_csrf_token_and_gets_the_reveal(ann):
    client, token = browser(ann)
    battle = finished_battle(ann)

    response = post(client, {"battle_id": battle.battle_id, "outcome": "a"}, token)

    assert response.status_code == 200, response.content
    reveal = response.json()
    assert reveal["a"]["model"] == battle.model_a and reveal["b"]["model"] == battle.model_b
    assert reveal["outcome"] == "a" and reveal["currency"]
    assert "no-cache" in response["Cache-Control"]
    assert ArenaVote.objects.get().battle_id == battle.battle_id

    again = post(client, {"battle_id": battle.battle_id, "outcome": "b"}, token)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"


def test_a_vote_without_the_csrf_token_is_refused_in_json(ann):
    client, _token = browser(ann)
    battle = finished_battle(ann)

    response = post(client, {"battle_id": battle.battle_id, "outcome": "a"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert not ArenaVote.objects.exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        ([1, 2], 400, "invalid_json"),
        ({"outcome": "a"}, 400, "invalid_battle_id"),
        ({"battle_id": "BATTLE", "outcome": "maybe"}, 400, "invalid_outcome"),
        ({"battle_id": "bat_unknown", "outcome": "a"}, 404, "battle_not_found"),
    ],
)
def test_bad_votes_get_a_json_error_naming_the_problem(ann, body, status, code):
    client, token = browser(ann)
    if isinstance(body, dict) and body.get("battle_id") == "BATTLE":
        body = {**body, "battle_id": finished_battle(ann).battle_id}

    response = post(client, body, token)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert not ArenaVote.objects.exists()


def test_a_failed_answer_is_a_409_naming_why(ann):
    client, token = browser(ann)
    battle = arena_battle_start(user_id=ann.pk, team_id=None, models=["m-one", "m-two"], prompt="p")
    arena_answer_record(battle_id=battle.battle_id, side="a", request_id="r1", ok=True)
    arena_answer_record(battle_id=battle.battle_id, side="b", request_id="r2", ok=False)

    response = post(client, {"battle_id": battle.battle_id, "outcome": "a"}, token)

    assert response.status_code == 409
    assert response.json()["error"]["message"] == "a stopped or failed answer cannot be voted on"


def test_a_logged_out_vote_is_a_json_401_and_a_get_a_405(ann):
    client = Client()
    assert client.post(VOTE_URL, b"{}", content_type="application/json").json()["error"]["code"] == "unauthenticated"
    client.force_login(ann)
    assert client.get(VOTE_URL).status_code == 405


def test_the_leaderboard_page_needs_a_login(client):
    response = client.get(BOARD_URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/playground/leaderboard/")


def test_the_leaderboard_page_shows_the_users_teams_rows_and_matrix(ann):
    red = Team.objects.get(name="red")
    blue = Team.objects.create(name="blue")
    for winner in ["m-one", "m-one", "m-two"]:
        battle = finished_battle(ann, red)
        arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="a" if battle.model_a == winner else "b")
    client = Client()
    client.force_login(ann)

    page = client.get(BOARD_URL, {"team": red.pk})

    assert page.status_code == 200
    html = page.content.decode()
    assert (
        "script-src 'self'" in page["Content-Security-Policy"]
        and "unsafe-inline" not in page["Content-Security-Policy"]
    )
    assert "<script>" not in html and " style=" not in html
    assert re.findall(r'data-testid="leaderboard-row" data-model="([^"]+)"', html) == ["m-one", "m-two"]
    assert f'<option value="{red.pk}" selected>red</option>' in html and "blue" not in html
    assert html.count('data-testid="winrate-cell"') == 4 and 'data-share="0.6667"' in html
    assert 'href="/playground/"' in html
    assert client.get(BOARD_URL, {"team": blue.pk}).status_code == 404
    overall = client.get(BOARD_URL).content.decode()
    assert '<option value="" selected>Overall</option>' in overall


def test_an_empty_leaderboard_says_so(ann):
    client = Client()
    client.force_login(ann)

    html = client.get(BOARD_URL).content.decode()

    assert 'data-testid="leaderboard-empty"' in html and 'data-testid="leaderboard-row"' not in html
