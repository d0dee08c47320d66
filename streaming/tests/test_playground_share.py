"""A saved playground run shared as a read-only link (streaming.playground, streaming.playground_runs) over the Django
test client with CSRF checks on: the owner makes and stops the link; the owner and the members of the run's team
open it; anyone else, staff included, gets the same 404 page as for a link that never existed; an arena run's page
names its models only on the turns that were voted on."""

import json
import re

import orjson
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.arena import arena_answer_record
from accounts.models import PlaygroundRun, Team, Tier
from accounts.services import api_key_issue
from streaming.playground_runs import (
    playground_arena_turn_start,
    playground_arena_vote,
    playground_run_turn_save,
    playground_run_turn_start,
)

pytestmark = pytest.mark.django_db

PROMPT = "Summarise the <b>plan</b>"
ANSWER = "The plan has **three** steps."


@pytest.fixture
def people():
    User = get_user_model()
    ann = User.objects.create_user("ann", password="pw-ann-123456")
    cat = User.objects.create_user("cat", password="pw-cat-123456")
    ben = User.objects.create_user("ben", password="pw-ben-123456")
    sam = User.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    red.members.add(ann, cat)
    blue.members.add(ben)
    api_key_issue(owner=ann, tier=Tier.objects.create(name="share-tier"), name="ann-key", team=red)
    return {"ann": ann, "cat": cat, "ben": ben, "sam": sam, "red": red}


def saved_run(user, team, *, prompt=PROMPT, answer=ANSWER) -> PlaygroundRun:
    run, turn = playground_run_turn_start(
        user_id=user.pk,
        team_id=team and team.pk,
        run_id=None,
        models=["m-one"],
        prompt=prompt,
        system="",
        options={},
        stream_id="st_1",
    )
    done = {"provider": "prov-x", "cost": 0.25, "usage": {"prompt_tokens": 3, "completion_tokens": 6}}
    playground_run_turn_save(
        run_id=run.pk,
        turn_index=turn,
        stream_id="st_1",
        answers={"m-one": {"status": "done", "text": answer, "done": done}},
    )
    return PlaygroundRun.objects.get(pk=run.pk)


def browser(user) -> tuple[Client, str]:
    """A logged-in client that checks CSRF like a browser, and the token its playground page carries."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/playground/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    return client, token


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def shared_data(response) -> dict:
    html = response.content.decode()
    blob = re.search(r'<script id="shared-run-data" type="application/json">(.*?)</script>', html, re.S)[1]
    return json.loads(blob)


def test_the_owner_shares_a_run_its_team_opens_it_and_others_get_a_404(people):
    run = saved_run(people["ann"], people["red"])
    client, token = browser(people["ann"])
    url = f"/playground/runs/{run.pk}/share"
    # A page without its CSRF token cannot share.
    refused = client.post(url)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"

    shared = client.post(url, headers={"X-CSRFToken": token})
    assert shared.status_code == 200, shared.content
    body = shared.json()
    run.refresh_from_db()
    assert body["shared"] is True and body["team"] == "red"
    assert body["url"] == f"http://testserver/playground/shared/{run.share_token}/"
    assert len(run.share_token) >= 32  # 24 random bytes
    # Sharing again keeps the same link; the run's payload names it.
    assert client.post(url, headers={"X-CSRFToken": token}).json()["url"] == body["url"]
    assert client.get(f"/playground/runs/{run.pk}/").json()["share_url"] == body["url"]
    link = body["url"].removeprefix("http://testserver")

    for who in ("ann", "cat"):
        page = logged_in(people[who]).get(link)
        assert page.status_code == 200, who
        assert "script-src 'self'" in page["Content-Security-Policy"] and "no-cache" in page["Cache-Control"]
        data = shared_data(page)
        assert data["title"] == PROMPT and data["owner"] == "ann" and data["team"] == "red"
        assert data["turns"][0]["answers"]["m-one"]["text"] == ANSWER
        assert "key_id" not in json.dumps(data)
        # The prompt is in the page as escaped text, never as markup.
        assert "<b>plan</b>" not in page.content.decode().split("<main", 1)[1].split("</main>", 1)[0]
    for who in ("ben", "sam"):
        page = logged_in(people[who]).get(link)
        assert page.status_code == 404, who
        assert PROMPT not in page.content.decode() and ANSWER not in page.content.decode()
        assert 'data-testid="shared-missing"' in page.content.decode()
    unknown = logged_in(people["cat"]).get("/playground/shared/not-a-token/")
    assert unknown.status_code == 404 and 'data-testid="shared-missing"' in unknown.content.decode()
    anonymous = Client().get(link)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")

    # Another user cannot share or stop sharing the run.
    other, other_token = browser(people["cat"])
    assert other.post(url, headers={"X-CSRFToken": other_token}).status_code == 404
    assert other.delete(url, headers={"X-CSRFToken": other_token}).status_code == 404
    assert client.get(url).status_code == 405

    # Stopping: the link answers 404 to the team too; sharing again makes a new link.
    stopped = client.delete(url, headers={"X-CSRFToken": token})
    assert stopped.status_code == 200 and stopped.json() == {
        "run_id": run.pk,
        "shared": False,
        "url": None,
        "team": "red",
    }
    run.refresh_from_db()
    assert run.share_token is None
    assert logged_in(people["cat"]).get(link).status_code == 404
    again = client.post(url, headers={"X-CSRFToken": token}).json()["url"]
    assert again != body["url"]


def test_a_run_without_a_team_is_its_owners_only(people):
    run = saved_run(people["ann"], None)
    client, token = browser(people["ann"])
    link = client.post(f"/playground/runs/{run.pk}/share", headers={"X-CSRFToken": token}).json()
    assert link["team"] is None
    path = link["url"].removeprefix("http://testserver")
    assert logged_in(people["ann"]).get(path).status_code == 200
    assert logged_in(people["cat"]).get(path).status_code == 404


def test_an_arena_runs_shared_page_names_the_models_of_voted_turns_only(people):
    ann, red = people["ann"], people["red"]
    turns = []
    run_id = None
    for index, prompt in enumerate(("First question", "Second question")):
        run, turn, battle = playground_arena_turn_start(
            user_id=ann.pk,
            team_id=red.pk,
            run_id=run_id,
            models=["m-left", "m-right"] if index == 0 else [turns[0].model_a, turns[0].model_b],
            prompt=prompt,
            system="",
            options={},
            stream_id=f"st_{index}",
            shuffle=index == 0,
        )
        run_id = run.pk
        turns.append(battle)
        answers = {
            model: {"status": "done", "text": text, "request_id": f"req-{index}-{model}", "done": {"cost": 0.5}}
            for model, text in (("m-left", "Answer one"), ("m-right", "Answer two"))
        }
        playground_run_turn_save(run_id=run.pk, turn_index=turn, stream_id=f"st_{index}", answers=answers)
        for side, model in (("a", battle.model_a), ("b", battle.model_b)):
            arena_answer_record(battle_id=battle.battle_id, side=side, request_id=f"req-{index}-{model}", ok=True)
    assert (turns[1].model_a, turns[1].model_b) == (turns[0].model_a, turns[0].model_b)
    playground_arena_vote(user_id=ann.pk, battle_id=turns[0].battle_id, outcome="a")

    run = PlaygroundRun.objects.get(pk=run_id)
    run.share_token = "arena-link-token-for-the-test-0001"
    run.save(update_fields=["share_token"])
    data = shared_data(logged_in(people["cat"]).get("/playground/shared/arena-link-token-for-the-test-0001/"))
    assert data["arena"] is True and data["models"] == ["Model A", "Model B"]
    voted, unvoted = data["turns"]
    assert voted["arena"]["vote"] == "a"
    assert (voted["arena"]["reveal"]["a"]["model"], voted["arena"]["reveal"]["b"]["model"]) == (
        turns[0].model_a,
        turns[0].model_b,
    )
    assert unvoted["arena"]["reveal"] is None
    hidden = orjson.dumps(unvoted).decode()
    assert "m-left" not in hidden and "m-right" not in hidden and "req-" not in hidden and "cost" not in hidden
    assert {answer["text"] for answer in unvoted["answers"].values()} == {"Answer one", "Answer two"}
