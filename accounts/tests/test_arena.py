"""The arena's battles and votes (accounts.arena) on real Redis and the test database: a battle's two sides, one
vote per battle from its own user on two finished answers, the reveal with each side's provider and cost, the
leaderboards per team and overall, who sees which team, retention of old votes and the admin's CSV export."""

import asyncio
import csv
import hashlib
import io
import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.arena import (
    BATTLE_KEY_PREFIX,
    BATTLE_TTL_SECONDS,
    arena_answer_record,
    arena_answer_record_async,
    arena_battle_start,
    arena_battle_start_async,
    arena_leaderboard,
    arena_team_resolve,
    arena_teams_visible,
    arena_vote_cast,
)
from accounts.models import ApiKey, ArenaVote, PlaygroundRun, Team, Tier, UsageRecord
from accounts.retention import retention_run
from aigateway.errors import GatewayError
from aigateway.redis import redis_sync

pytestmark = pytest.mark.django_db


@pytest.fixture
def people():
    User = get_user_model()
    ann = User.objects.create_user("ann", password="pw-ann-123456")
    ben = User.objects.create_user("ben", password="pw-ben-123456")
    red = Team.objects.create(name="red")
    blue = Team.objects.create(name="blue")
    red.members.add(ann)
    blue.members.add(ben)
    return ann, ben, red, blue


def battle_for(user, team=None, models=("m-one", "m-two"), *, ok=(True, True), prompt="Which is better?"):
    battle = arena_battle_start(
        user_id=user.pk, team_id=None if team is None else team.pk, models=list(models), prompt=prompt
    )
    for side, answered in zip(("a", "b"), ok, strict=True):
        if answered is not None:
            arena_answer_record(
                battle_id=battle.battle_id, side=side, request_id=f"req_{side}_{battle.battle_id}", ok=answered
            )
    return battle


def vote_for(user, team, winner: str | None, models=("m-one", "m-two"), outcome: str | None = None) -> dict:
    """A finished battle and the user's vote on it: `winner` (a model name) won, or `outcome` as given."""
    battle = battle_for(user, team, models)
    if outcome is None:
        outcome = "a" if battle.model_a == winner else "b"
    return arena_vote_cast(user_id=user.pk, battle_id=battle.battle_id, outcome=outcome)


def refusal(call) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        call()
    return raised.value


def test_a_battle_takes_two_distinct_models_in_random_order_and_lives_in_redis_for_a_day(people):
    ann, _, red, _ = people
    battle = arena_battle_start(user_id=ann.pk, team_id=red.pk, models=["m-one", "m-two", "m-three"], prompt="hi")

    assert battle.model_a != battle.model_b
    assert {battle.model_a, battle.model_b} <= {"m-one", "m-two", "m-three"}
    assert battle.prompt_hash == hashlib.sha256(b"hi").hexdigest()
    key = BATTLE_KEY_PREFIX + battle.battle_id
    stored = redis_sync().hgetall(key)
    assert stored[b"model_a"].decode() == battle.model_a and stored[b"team_id"] == str(red.pk).encode()
    assert 0 < redis_sync().ttl(key) <= BATTLE_TTL_SECONDS

    orders = {
        (b.model_a, b.model_b)
        for b in (arena_battle_start(user_id=ann.pk, team_id=None, models=["x", "y"], prompt="p") for _ in range(40))
    }
    assert orders == {("x", "y"), ("y", "x")}  # both orders within 40 starts (all alike: 2 * 2**-40)


def test_a_battle_needs_two_different_models(people):
    ann = people[0]
    error = refusal(lambda: arena_battle_start(user_id=ann.pk, team_id=None, models=["x", "x"], prompt="p"))
    assert (error.status, error.code, error.param) == (400, "arena_needs_two_models", "models")


def test_a_vote_is_written_once_and_reveals_both_sides(people):
    ann, _, red, _ = people
    run = PlaygroundRun.objects.create(user=ann, title="t")
    battle = arena_battle_start(user_id=ann.pk, team_id=red.pk, models=["m-one", "m-two"], run_id=run.pk, turn=2,
                                prompt="Compare these")  # fmt: skip
    arena_answer_record(battle_id=battle.battle_id, side="a", request_id="req_a1", ok=True)
    arena_answer_record(battle_id=battle.battle_id, side="b", request_id="req_b1", ok=True, provider="sim-b")
    UsageRecord.objects.create(request_id="req_a1", model=battle.model_a, provider="sim-a", endpoint="compare",
                               status_code=200, cost=Decimal("0.00001200"), created_at=timezone.now())  # fmt: skip

    reveal = arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="b")

    assert reveal["outcome"] == "b" and reveal["battle_id"] == battle.battle_id
    assert reveal["a"] == {"model": battle.model_a, "provider": "sim-a", "cost": "0.000012", "request_id": "req_a1"}
    # No usage record yet for side B: the provider its answer named, no cost.
    assert reveal["b"] == {"model": battle.model_b, "provider": "sim-b", "cost": None, "request_id": "req_b1"}
    vote = ArenaVote.objects.get()
    assert (vote.battle_id, vote.user, vote.team, vote.run, vote.turn, vote.outcome) == (
        battle.battle_id, ann, red, run, 2, "b",
    )  # fmt: skip
    assert (vote.model_a, vote.model_b) == (battle.model_a, battle.model_b)
    assert (vote.request_id_a, vote.request_id_b) == ("req_a1", "req_b1")
    assert vote.prompt_hash == hashlib.sha256(b"Compare these").hexdigest()

    error = refusal(lambda: arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="a"))
    assert (error.status, error.code) == (409, "already_voted")
    assert ArenaVote.objects.count() == 1 and ArenaVote.objects.get().outcome == "b"


@pytest.mark.parametrize("ok", [(True, False), (False, True), (False, False)])
def test_a_stopped_or_failed_answer_cannot_be_voted_on(people, ok):
    ann = people[0]
    battle = battle_for(ann, ok=ok)

    error = refusal(lambda: arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="tie"))

    assert error.status == 409 and error.message == "a stopped or failed answer cannot be voted on"
    assert not ArenaVote.objects.exists()


def test_a_vote_waits_for_both_answers(people):
    ann = people[0]
    battle = battle_for(ann, ok=(True, None))

    error = refusal(lambda: arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="a"))

    assert (error.status, error.code) == (409, "answers_pending")
    assert not ArenaVote.objects.exists()


def test_another_users_battle_is_refused_as_unknown(people):
    ann, ben, _, _ = people
    battle = battle_for(ann)

    error = refusal(lambda: arena_vote_cast(user_id=ben.pk, battle_id=battle.battle_id, outcome="a"))
    unknown = refusal(lambda: arena_vote_cast(user_id=ben.pk, battle_id="bat_nope", outcome="a"))

    assert (error.status, error.code, error.param) == (404, "battle_not_found", "battle_id")
    assert (unknown.status, unknown.code) == (404, "battle_not_found")
    assert not ArenaVote.objects.exists()
    arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="a")  # its own user still may
    assert ArenaVote.objects.get().user == ann


@pytest.mark.parametrize("outcome", ["A", "left", "", None, 1])
def test_an_unknown_outcome_is_a_400(people, outcome):
    ann = people[0]
    battle = battle_for(ann)

    error = refusal(lambda: arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome=outcome))

    assert (error.status, error.code, error.param) == (400, "invalid_outcome", "outcome")
    assert not ArenaVote.objects.exists()


def test_an_answer_to_an_unknown_battle_is_refused_and_stores_nothing():
    error = refusal(lambda: arena_answer_record(battle_id="bat_gone", side="a", request_id="req_x", ok=True))
    bad_side = refusal(lambda: arena_answer_record(battle_id="bat_gone", side="c", request_id="req_x", ok=True))

    assert (error.status, error.code) == (404, "battle_not_found")
    assert (bad_side.status, bad_side.param) == (400, "side")
    assert redis_sync().keys(BATTLE_KEY_PREFIX + "*") == []


def test_the_async_twins_start_and_answer_a_battle_the_vote_accepts(people):
    ann, _, red, _ = people

    async def play():
        battle = await arena_battle_start_async(user_id=ann.pk, team_id=red.pk, models=["m-one", "m-two"], prompt="p")
        await arena_answer_record_async(battle_id=battle.battle_id, side="a", request_id="req_1", ok=True)
        await arena_answer_record_async(battle_id=battle.battle_id, side="b", request_id="req_2", ok=True)
        return battle

    battle = asyncio.run(play())
    reveal = arena_vote_cast(user_id=ann.pk, battle_id=battle.battle_id, outcome="tie")

    assert {reveal["a"]["model"], reveal["b"]["model"]} == {"m-one", "m-two"}
    assert ArenaVote.objects.get().team == red
    gone = refusal(lambda: asyncio.run(arena_answer_record_async(battle_id="bat_x", side="a", request_id="r", ok=True)))
    assert gone.status == 404


def test_leaderboards_count_a_teams_votes_or_all_of_them(people):
    ann, ben, red, blue = people
    for _ in range(3):
        vote_for(ann, red, "m-one")
    vote_for(ann, red, "m-two")
    vote_for(ben, blue, None, outcome="tie")
    vote_for(ben, blue, None, outcome="bad")
    vote_for(ben, None, "m-two")

    overall = arena_leaderboard(team_id=None)
    red_board = arena_leaderboard(team_id=red.pk)
    blue_board = arena_leaderboard(team_id=blue.pk)

    def counts(board):
        return {row["model"]: (row["battles"], row["wins"], row["ties"], row["bad"]) for row in board["models"]}

    assert overall["team"] is None and red_board["team"] == "red" and blue_board["team"] == "blue"
    assert counts(red_board) == {"m-one": (4, 3, 0, 0), "m-two": (4, 1, 0, 0)}
    assert counts(blue_board) == {"m-one": (2, 0, 1, 1), "m-two": (2, 0, 1, 1)}
    assert counts(overall) == {"m-one": (7, 3, 1, 1), "m-two": (7, 2, 1, 1)}
    assert [row["model"] for row in red_board["models"]] == ["m-one", "m-two"]
    assert red_board["models"][0]["rating"] == pytest.approx(1000 + 200 * 0.47712, abs=0.1)  # 3 of 4: log10(3)
    assert red_board["matrix"] == {"m-one": {"m-two": 0.75}, "m-two": {"m-one": 0.25}}
    assert blue_board["matrix"]["m-one"]["m-two"] == 0.5

    # A new vote is counted at once (the cached board belongs to the votes it was made from).
    vote_for(ann, red, "m-two")
    assert counts(arena_leaderboard(team_id=red.pk))["m-two"] == (5, 2, 0, 0)
    assert refusal(lambda: arena_leaderboard(team_id=999_999)).status == 404


def test_a_user_sees_their_teams_and_their_keys_teams_staff_every_team(people):
    ann, ben, red, blue = people
    green = Team.objects.create(name="green")
    ApiKey.objects.create(owner=ben, tier=Tier.objects.create(name="t"), name="k", key_hash="h" * 64, prefix="sk-gw-x",
                          team=green)  # fmt: skip

    assert [t.name for t in arena_teams_visible(user_id=ann.pk, is_staff=False)] == ["red"]
    assert [t.name for t in arena_teams_visible(user_id=ben.pk, is_staff=False)] == ["blue", "green"]
    assert [t.name for t in arena_teams_visible(user_id=ann.pk, is_staff=True)] == ["blue", "green", "red"]
    assert arena_team_resolve(value="red", user_id=ann.pk, is_staff=False) == red
    assert arena_team_resolve(value=str(red.pk), user_id=ann.pk, is_staff=False) == red
    assert arena_team_resolve(value=None, user_id=ann.pk, is_staff=False) is None
    assert refusal(lambda: arena_team_resolve(value="blue", user_id=ann.pk, is_staff=False)).status == 404
    assert refusal(lambda: arena_team_resolve(value="nobody", user_id=ann.pk, is_staff=True)).status == 404


def test_retention_deletes_votes_older_than_the_setting(people, settings, caplog):
    ann, _, red, _ = people
    settings.GATEWAY_ARENA_RETENTION_DAYS = 30
    for _ in range(5):
        vote_for(ann, red, "m-one")
    old = list(ArenaVote.objects.values_list("pk", flat=True)[:3])
    ArenaVote.objects.filter(pk__in=old).update(created_at=timezone.now() - timedelta(days=31))

    with caplog.at_level(logging.INFO, logger="accounts.retention"):
        results = retention_run(batch_size=2)

    assert results["arena votes"].deleted == 3 and results["arena votes"].batches == 2
    assert ArenaVote.objects.count() == 2 and not ArenaVote.objects.filter(pk__in=old).exists()
    assert "3 arena votes deleted (older than 30 days)" in caplog.records[-1].getMessage()

    settings.GATEWAY_ARENA_RETENTION_DAYS = 0
    ArenaVote.objects.update(created_at=timezone.now() - timedelta(days=4000))
    assert retention_run()["arena votes"] is None
    assert ArenaVote.objects.count() == 2


def test_the_admin_lists_filters_and_exports_votes_as_csv(people, admin_client):
    ann, ben, red, blue = people
    vote_for(ann, red, "m-one")
    vote_for(ben, blue, "=cmd()", models=("=cmd()", "m-two"))
    url = "/admin/accounts/arenavote/"

    listing = admin_client.get(url, {"model": "=cmd()"})
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 1
    assert admin_client.get(url, {"team__id__exact": red.pk}).context["cl"].result_count == 1
    assert admin_client.get(url, {"outcome__exact": "tie"}).context["cl"].result_count == 0
    assert admin_client.get(url + f"{ArenaVote.objects.first().pk}/change/").status_code == 200
    assert admin_client.get(url + "add/").status_code == 403

    response = admin_client.post(
        url, {"action": "export_votes_csv", "_selected_action": list(ArenaVote.objects.values_list("pk", flat=True))}
    )

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="arena-votes-')
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(row["user"], row["team"]) for row in rows] == [("ann", "red"), ("ben", "blue")]
    assert rows[1]["model_a"] in ("'=cmd()", "m-two") and "=cmd()" not in (rows[1]["model_a"], rows[1]["model_b"])
    assert rows[0]["battle_id"] == ArenaVote.objects.order_by("created_at").first().battle_id
