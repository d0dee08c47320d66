"""The arena leaderboard in a real browser: Debian's chromium driven by Playwright against a real gateway process
and real Redis, over loopback. Twenty votes from two users in two teams (one user's cast through the page's vote
endpoint with their session and CSRF token, the other's through the services), then each board (overall and each
team) shows every model's battles and wins; a user sees only their teams. Screenshots of the board, light and dark,
land in var/test-artifacts/."""

from collections import Counter

import orjson
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.arena import arena_answer_record, arena_battle_start, arena_vote_cast
from accounts.models import ArenaVote, Team
from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-arena-board-1234"
ALPHA, BETA, GAMMA = "arena-alpha", "arena-beta", "arena-gamma"
# (first model, second model, result): the winner's name, "tie" or "bad". 12 votes by ann in red, 8 by ben in blue.
ANN_VOTES = [
    *[(ALPHA, BETA, ALPHA)] * 3, (ALPHA, BETA, BETA),
    *[(ALPHA, GAMMA, ALPHA)] * 2, (ALPHA, GAMMA, "tie"),
    *[(BETA, GAMMA, BETA)] * 2, (BETA, GAMMA, GAMMA), (BETA, GAMMA, "bad"),
    (GAMMA, ALPHA, GAMMA),
]  # fmt: skip
BEN_VOTES = [
    *[(BETA, GAMMA, GAMMA)] * 3, (BETA, GAMMA, BETA),
    *[(ALPHA, BETA, BETA)] * 2, (ALPHA, BETA, "tie"),
    (ALPHA, GAMMA, GAMMA),
]  # fmt: skip


def expected(votes) -> dict[str, tuple[int, int]]:
    battles, wins = Counter(), Counter()
    for first, second, result in votes:
        battles.update([first, second])
        if result not in ("tie", "bad"):
            wins[result] += 1
    return {model: (battles[model], wins[model]) for model in battles}


@pytest.fixture
def world():
    User = get_user_model()
    ann = User.objects.create_user("ann", password=PASSWORD)
    ben = User.objects.create_user("ben", password=PASSWORD)
    sam = User.objects.create_user("sam", password=PASSWORD, is_staff=True)
    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    red.members.add(ann)
    blue.members.add(ben)
    return {"ann": ann, "ben": ben, "sam": sam, "red": red, "blue": blue}


def battle(user, team, first: str, second: str, result: str):
    """A finished battle of `user` under `team` and the outcome that says `result` about it."""
    started = arena_battle_start(user_id=user.pk, team_id=team.pk, models=[first, second], prompt=f"{first}?{second}")
    for side in ("a", "b"):
        arena_answer_record(
            battle_id=started.battle_id, side=side, request_id=f"req-{side}-{started.battle_id}", ok=True
        )
    outcome = result if result in ("tie", "bad") else ("a" if started.model_a == result else "b")
    return started, outcome


def login(context, base: str, username: str):
    page = context.new_page()
    page.goto(base + "/playground/leaderboard/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/playground/leaderboard/")
    return page


def rows(page) -> dict[str, tuple[int, int]]:
    board = {}
    for row in page.get_by_test_id("leaderboard-row").all():
        battles = int(row.get_by_test_id("leaderboard-battles").inner_text())
        wins = int(row.get_by_test_id("leaderboard-wins").inner_text())
        board[row.get_attribute("data-model")] = (battles, wins)
    return board


def board_of(page, base: str, team=None) -> dict[str, tuple[int, int]]:
    page.goto(base + "/playground/leaderboard/" + (f"?team={team.pk}" if team else ""))
    expect(page.get_by_test_id("leaderboard-row").first).to_be_visible()
    return rows(page)


def test_each_board_shows_the_battles_and_wins_of_its_votes(gateway, world, browser, monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the test's ORM calls are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    base = gateway.url
    for vote in ANN_VOTES:
        started, outcome = battle(world["ann"], world["red"], *vote)
        arena_vote_cast(user_id=world["ann"].pk, battle_id=started.battle_id, outcome=outcome)

    # Ben votes the way the page does: a JSON POST with his session cookie and CSRF token.
    ben_context = browser.new_context(viewport={"width": 1200, "height": 800})
    ben_page = login(ben_context, base, "ben")
    token = next(c["value"] for c in ben_context.cookies() if c["name"] == "csrftoken")
    for vote in BEN_VOTES:
        started, outcome = battle(world["ben"], world["blue"], *vote)
        response = ben_page.request.post(
            base + "/playground/arena/vote",
            data=orjson.dumps({"battle_id": started.battle_id, "outcome": outcome}),
            headers={"Content-Type": "application/json", "X-CSRFToken": token},
        )
        assert response.status == 200, response.text()
        reveal = response.json()
        assert (reveal["a"]["model"], reveal["b"]["model"]) == (started.model_a, started.model_b)
    assert ArenaVote.objects.filter(user=world["ben"], team=world["blue"]).count() == len(BEN_VOTES)
    assert ArenaVote.objects.count() == 20

    # Ben: his team and the overall board; red is not his.
    assert board_of(ben_page, base, world["blue"]) == expected(BEN_VOTES)
    assert [o.inner_text() for o in ben_page.get_by_test_id("leaderboard-team").locator("option").all()] == [
        "Overall",
        "blue",
    ]
    assert ben_page.goto(base + f"/playground/leaderboard/?team={world['red'].pk}").status == 404
    ben_context.close()

    # Staff: every board, the team picker switching between them.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = login(context, base, "sam")
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    overall = board_of(page, base)
    assert overall == expected(ANN_VOTES + BEN_VOTES)
    ratings = [
        float(r.get_by_test_id("leaderboard-rating").inner_text()) for r in page.get_by_test_id("leaderboard-row").all()
    ]
    assert ratings == sorted(ratings, reverse=True)
    assert page.get_by_test_id("winrate-cell").count() == 9
    for bar in page.get_by_test_id("leaderboard-ci-bar").all():
        assert bar.get_attribute("data-drawn") == "true"

    page.get_by_test_id("leaderboard-team").select_option(label="red")
    expect(page).to_have_url(base + f"/playground/leaderboard/?team={world['red'].pk}")
    expect(page.get_by_test_id("leaderboard-title")).to_contain_text("red")
    assert rows(page) == expected(ANN_VOTES)
    page.get_by_test_id("leaderboard-team").select_option(label="blue")
    expect(page).to_have_url(base + f"/playground/leaderboard/?team={world['blue'].pk}")
    assert rows(page) == expected(BEN_VOTES)
    assert problems == []

    page.goto(base + "/playground/leaderboard/")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        expect(page.get_by_test_id("leaderboard-row").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / f"arena-leaderboard-{scheme}.png"), full_page=True)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(14, 16, 21)"  # the playground's dark --bg
    page.get_by_test_id("back-to-playground").click()
    expect(page).to_have_url(base + "/playground/")
    context.close()

    # Ann: red and overall, never blue.
    context = browser.new_context()
    page = login(context, base, "ann")
    assert board_of(page, base, world["red"]) == expected(ANN_VOTES)
    assert page.goto(base + f"/playground/leaderboard/?team={world['blue'].pk}").status == 404
    context.close()
