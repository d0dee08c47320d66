"""The playground's blind arena over the real websocket consumer: two models answer as sides "a" and "b", and no
frame (live or resumed), saved run or history entry names a model, provider, route, request id or cost until the
turn's vote; one vote per turn, none on a stopped or failed answer; a later turn keeps both models under the same
sides. Driven in process with channels' WebsocketCommunicator through the real ASGI application, relaying to the
simulator over loopback HTTP, battles in the real Redis."""

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.arena import arena_answer_record, arena_battle_start
from accounts.models import ArenaVote, PlaygroundRun, Team, Tier
from accounts.services import api_key_issue
from accounts.usage import usage_retry_buffer_size
from aigateway.asgi import application
from aigateway.config_watch import config_watch
from aigateway.errors import GatewayError
from aigateway.redis import redis_sync
from providers.health import HEALTH_DOWN_KEY
from providers.models import Provider
from providers.upstream import upstream_clients_close
from streaming.playground_arena import arena_event, arena_turn_view
from streaming.playground_runs import playground_arena_vote
from streaming.relay import background_drain
from tests.support.data import model_create, provider_create
from tests.support.usage import await_usage

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
PROMPT = "Which is the better answer?"
MESSAGES = [{"role": "user", "content": PROMPT}]
UPSTREAM = {
    "duel-alpha": "sim-echo?tokens=6&interval_ms=10",
    "duel-beta": "sim-mini?tokens=7&interval_ms=10",
    "duel-gamma": "sim-echo?tokens=5&interval_ms=10",
    "duel-broken": "sim-echo?fail=500",
    "duel-slow": "sim-mini?tokens=200&interval_ms=40",
}
# What a battle's frames must never say before its vote (besides the request ids, checked per run).
SECRETS = [*UPSTREAM, "sim-echo", "sim-mini", "prov-blue", "prov-down", "duel-embed"]
FORBIDDEN_FIELDS = {"model", "served_model", "route", "provider", "cost", "request_id"}


@pytest.fixture(autouse=True)
async def close_upstream_clients():
    yield
    await background_drain()
    await upstream_clients_close()
    assert usage_retry_buffer_size() == 0


@pytest.fixture
def world(fresh_simulator):
    blue = provider_create("prov-blue", fresh_simulator.openai_base)
    down = provider_create("prov-down", fresh_simulator.openai_base)
    models = {name: model_create(name, [(blue, upstream, 0)]) for name, upstream in UPSTREAM.items()}
    models["duel-gamma"].deployments.update(provider=down)
    models["duel-embed"] = model_create("duel-embed", [(blue, "sim-echo", 0)], kinds=["embeddings"])
    User = get_user_model()
    ann = User.objects.create_user("ann", password="pw-ann-123456")
    ben = User.objects.create_user("ben", password="pw-ben-123456")
    red = Team.objects.create(name="red")
    red.members.add(ann)
    # The draw tier: two chat models up, one whose provider is down, one that is not a chat model.
    draw = Tier.objects.create(name="duel-draw", max_compare_models=3)
    draw.allowed_models.set([models[name] for name in ("duel-alpha", "duel-beta", "duel-gamma", "duel-embed")])
    every = Tier.objects.create(name="duel-all", max_compare_models=3)
    draw_key = api_key_issue(owner=ann, tier=draw, name="ann-draw", team=red)
    all_key = api_key_issue(owner=ann, tier=every, name="ann-all", team=red)
    api_key_issue(owner=ben, tier=every, name="ben-all")
    redis_sync().set(HEALTH_DOWN_KEY.format(provider_id=down.pk), "health check failed")
    config_watch.invalidate()
    return {"ann": ann, "ben": ben, "red": red, "draw_key": draw_key.api_key.id, "all_key": all_key.api_key.id}


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def session_socket(user) -> WebsocketCommunicator:
    cookie = await sync_to_async(session_cookie)(user)
    ws = WebsocketCommunicator(application, "/ws/playground/", headers=[(b"cookie", cookie), ORIGIN])
    connected, _ = await ws.connect(timeout=5)
    assert connected
    assert await ws.receive_json_from(timeout=5) == {"type": "ready", "auth": "session"}
    return ws


async def until_complete(ws, frames=None, timeout: float = 20.0) -> list[dict]:
    frames = [] if frames is None else frames
    async with asyncio.timeout(timeout):
        while not frames or frames[-1]["type"] != "complete":
            frames.append(await ws.receive_json_from(timeout=timeout))
    return frames


def fields_of(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {name for item in value.values() for name in fields_of(item)}
    if isinstance(value, list):
        return {name for item in value for name in fields_of(item)}
    return set()


def assert_blind(items, secrets) -> None:
    """Neither a name, an upstream model, a provider, a request id, nor a field that would carry one."""
    for item in items:
        text = orjson.dumps(item).decode()
        leaked = [secret for secret in secrets if secret and secret in text]
        assert not leaked, (leaked, item)
        assert not fields_of(item) & FORBIDDEN_FIELDS, item


def side_text(frames, side: str) -> str:
    return "".join(f["content"] for f in frames if f.get("side") == side and f["type"] == "chunk")


def page_get(user, path: str) -> dict:
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 200, response.content
    return response.json()


def vote(user, battle_id: str, outcome: str):
    client = Client()
    client.force_login(user)
    return client.post(
        "/playground/arena/vote",
        orjson.dumps({"battle_id": battle_id, "outcome": outcome}),
        content_type="application/json",
    )


def saved_run(run_id: int) -> PlaygroundRun:
    return PlaygroundRun.objects.get(pk=run_id)


async def test_a_drawn_battle_names_only_its_sides_until_the_vote_reveals_them(world, fresh_simulator):
    ann = world["ann"]
    ws = await session_socket(ann)
    try:
        await ws.send_json_to({"type": "chat", "arena": True, "key_id": world["draw_key"], "messages": MESSAGES})
        saved = await ws.receive_json_from(timeout=5)
        assert saved["type"] == "saved" and saved["turn"] == 0
        battle_id = saved["arena"]["battle_id"]
        frames = await until_complete(ws)
    finally:
        await ws.disconnect()
    events = await await_usage(lambda events: len(events) == 2)
    ids = [event["request_id"] for event in events]
    # The draw took the two chat models whose providers are up: not the one marked down, not the embeddings model.
    assert sorted(event["model"] for event in events) == ["duel-alpha", "duel-beta"]
    assert_blind([saved, *frames], [*SECRETS, *ids])
    assert {f["side"] for f in frames if f["type"] in ("start", "chunk", "done")} == {"a", "b"}
    complete = frames[-1]
    assert sorted(complete["results"]) == ["a", "b"]
    assert all(result["status"] == "done" for result in complete["results"].values())
    done = {f["side"]: f for f in frames if f["type"] == "done"}
    assert done["a"]["usage"]["completion_tokens"] in (6, 7) and done["a"]["ttft_ms"] is not None

    # The saved run as the page reopens it, and the History list: blind too.
    run_id = saved["run_id"]
    reopened = await sync_to_async(page_get)(ann, f"/playground/runs/{run_id}/")
    listed = await sync_to_async(page_get)(ann, "/playground/runs/")
    assert_blind([reopened, listed], [*SECRETS, *ids])
    assert reopened["arena"] is True and reopened["models"] == ["Model A", "Model B"]
    [turn] = reopened["turns"]
    assert turn["arena"] == {"battle_id": battle_id, "vote": None, "reveal": None}
    assert {side: turn["answers"][side]["text"] for side in "ab"} == {s: side_text(frames, s) for s in "ab"}
    assert listed["runs"][0]["models"] == ["Model A", "Model B"] and listed["runs"][0]["arena"] is True

    # The vote reveals the names, and is kept with the prompt's hash, both request ids, the user and their team.
    response = await sync_to_async(vote)(ann, battle_id, "b")
    assert response.status_code == 200, response.content
    reveal = response.json()
    run = await sync_to_async(saved_run)(run_id)
    sides = run.turns[0]["arena"]["sides"]
    assert {reveal["a"]["model"], reveal["b"]["model"]} == {"duel-alpha", "duel-beta"}
    assert (reveal["a"]["model"], reveal["b"]["model"]) == (sides["a"], sides["b"])
    assert reveal["a"]["provider"] == reveal["b"]["provider"] == "prov-blue"
    by_model = {event["model"]: event for event in events}
    for side in "ab":
        # Priced from the saved answer while the usage record is not written yet: the done event's cost.
        assert reveal[side]["cost"] is not None
        assert reveal[side]["request_id"] == by_model[reveal[side]["model"]]["request_id"]
    row = await sync_to_async(ArenaVote.objects.get)(battle_id=battle_id)
    assert (row.user_id, row.team_id, row.run_id, row.turn, row.outcome) == (ann.pk, world["red"].pk, run_id, 0, "b")
    assert (row.model_a, row.model_b) == (sides["a"], sides["b"])
    assert (row.request_id_a, row.request_id_b) == (reveal["a"]["request_id"], reveal["b"]["request_id"])
    assert len(row.prompt_hash) == 64 and PROMPT not in row.prompt_hash

    # One vote per turn.
    again = await sync_to_async(vote)(ann, battle_id, "a")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"
    assert await sync_to_async(ArenaVote.objects.count)() == 1

    # From now on the saved turn carries its reveal, and the run is listed by its models' names.
    reopened = await sync_to_async(page_get)(ann, f"/playground/runs/{run_id}/")
    [turn] = reopened["turns"]
    assert turn["arena"]["vote"] == "b"
    assert turn["arena"]["reveal"]["a"]["model"] == sides["a"] and turn["arena"]["reveal"]["b"]["provider"]
    assert (
        turn["answers"]["a"]["done"]["served_model"] == sides["a"] and turn["answers"]["a"]["done"]["cost"] is not None
    )
    listed = await sync_to_async(page_get)(ann, "/playground/runs/")
    assert sorted(listed["runs"][0]["models"]) == ["duel-alpha", "duel-beta"]


async def test_a_follow_up_turn_keeps_both_models_under_the_same_sides(world, fresh_simulator):
    ann = world["ann"]
    ws = await session_socket(ann)
    try:
        picks = ["duel-alpha", "duel-gamma"]  # the user's two picks: the draw's health rule is for drawn models only
        await ws.send_json_to(
            {"type": "chat", "arena": True, "key_id": world["all_key"], "models": picks, "messages": MESSAGES}
        )
        first = await ws.receive_json_from(timeout=5)
        frames = await until_complete(ws)
        assert all(result["status"] == "done" for result in frames[-1]["results"].values())
        answers = {side: side_text(frames, side) for side in "ab"}
        run_id = first["run_id"]
        sides = (await sync_to_async(saved_run)(run_id)).turns[0]["arena"]["sides"]
        assert sorted(sides.values()) == sorted(picks)

        # The page sends each side's own history; the run's sides decide which model gets which.
        by_side = {
            side: [*MESSAGES, {"role": "assistant", "content": answers[side]}, {"role": "user", "content": "And?"}]
            for side in "ab"
        }
        await ws.send_json_to({"type": "chat", "arena": True, "run_id": run_id, "messages_by_side": by_side})
        second = await ws.receive_json_from(timeout=5)
        assert second["type"] == "saved" and (second["run_id"], second["turn"]) == (run_id, 1)
        assert second["arena"]["battle_id"] != first["arena"]["battle_id"]
        frames_2 = await until_complete(ws)

        # A chat that names models on an arena run, or an arena chat on a plain run, is refused.
        await ws.send_json_to({"type": "chat", "run_id": run_id, "models": picks, "messages": MESSAGES})
        refused = await ws.receive_json_from(timeout=5)
        assert (refused["status"], refused["code"]) == (400, "arena_run")
    finally:
        await ws.disconnect()
    ids = [event["request_id"] for event in await await_usage(lambda events: len(events) == 4)]
    assert_blind([first, second, *frames, *frames_2], [*SECRETS, *ids])
    run = await sync_to_async(saved_run)(run_id)
    assert run.turns[1]["arena"]["sides"] == sides and len(run.turns) == 2
    for side, model in sides.items():
        [_, follow_up] = fresh_simulator.requests(model=UPSTREAM[model])
        assert follow_up["body"]["messages"][1] == {"role": "assistant", "content": answers[side]}
    # Each turn is voted on once, under the same labels.
    for battle_id, outcome in ((first["arena"]["battle_id"], "a"), (second["arena"]["battle_id"], "tie")):
        reveal = await sync_to_async(playground_arena_vote)(user_id=ann.pk, battle_id=battle_id, outcome=outcome)
        assert (reveal["a"]["model"], reveal["b"]["model"]) == (sides["a"], sides["b"])
    rows = await sync_to_async(list)(ArenaVote.objects.order_by("turn").values_list("turn", "model_a", "outcome"))
    assert rows == [(0, sides["a"], "a"), (1, sides["a"], "tie")]


async def test_a_failed_answer_cannot_be_voted_on_and_its_error_names_no_model(world):
    ann = world["ann"]
    ws = await session_socket(ann)
    try:
        await ws.send_json_to(
            {
                "type": "chat",
                "arena": True,
                "key_id": world["all_key"],
                "models": ["duel-alpha", "duel-broken"],
                "messages": MESSAGES,
            }
        )
        saved = await ws.receive_json_from(timeout=5)
        frames = await until_complete(ws)
    finally:
        await ws.disconnect()
    [error] = [f for f in frames if f["type"] == "error"]
    assert error["side"] in ("a", "b") and error["status"] >= 500
    assert error["message"] == f"Model {error['side'].upper()} could not answer."
    statuses = {side: result["status"] for side, result in frames[-1]["results"].items()}
    assert statuses == {error["side"]: "error", "ab".replace(error["side"], ""): "done"}
    ids = [event["request_id"] for event in await await_usage(lambda events: len(events) == 2)]
    assert_blind([saved, *frames], [*SECRETS, *ids])
    response = await sync_to_async(vote)(ann, saved["arena"]["battle_id"], "a")
    assert response.status_code == 409 and response.json()["error"]["code"] == "answer_not_ok"
    assert await sync_to_async(ArenaVote.objects.count)() == 0
    # The names stay hidden: a turn that cannot be voted on never reveals them.
    reopened = await sync_to_async(page_get)(ann, f"/playground/runs/{saved['run_id']}/")
    assert_blind([reopened], [*SECRETS, *ids])


async def test_a_stopped_answer_cannot_be_voted_on_and_a_resumed_turn_is_blind_too(world):
    ann = world["ann"]
    ws = await session_socket(ann)
    picks = ["duel-alpha", "duel-slow"]
    await ws.send_json_to(
        {"type": "chat", "arena": True, "key_id": world["all_key"], "models": picks, "messages": MESSAGES}
    )
    saved = await ws.receive_json_from(timeout=5)
    frames = []
    async with asyncio.timeout(15):
        while sum(f["type"] == "chunk" for f in frames) < 10:
            frames.append(await ws.receive_json_from(timeout=5))
    await ws.disconnect()  # a reload: the run goes on

    again = await session_socket(ann)
    try:
        await again.send_json_to({"type": "resume", "run_id": saved["run_id"], "after": 0})
        resumed = await again.receive_json_from(timeout=5)
        assert resumed["type"] == "resumed" and resumed["arena"] == saved["arena"]
        replay = [await again.receive_json_from(timeout=5) for _ in range(12)]
        await again.send_json_to({"type": "cancel"})
        replay = await until_complete(again, replay)
    finally:
        await again.disconnect()
    statuses = {result["status"] for result in replay[-1]["results"].values()}
    assert statuses == {"done", "cancelled"}
    ids = [event["request_id"] for event in await await_usage(lambda events: len(events) == 2)]
    assert_blind([saved, resumed, *frames, *replay], [*SECRETS, *ids])
    response = await sync_to_async(vote)(ann, saved["arena"]["battle_id"], "tie")
    assert response.status_code == 409 and response.json()["error"]["code"] == "answer_not_ok"


async def test_battles_refuse_bad_picks_without_naming_a_drawn_model(world):
    ws = await session_socket(world["ann"])
    try:

        async def refused(frame: dict) -> dict:
            await ws.send_json_to({"type": "chat", "arena": True, "messages": MESSAGES, **frame})
            answer = await ws.receive_json_from(timeout=5)
            assert answer["type"] == "error" and "model" not in answer and "side" not in answer, answer
            return answer

        three = await refused({"key_id": world["all_key"], "models": ["duel-alpha", "duel-beta", "duel-gamma"]})
        assert three["status"] == 400 and "at most two" in three["message"]
        twice = await refused({"key_id": world["all_key"], "models": ["duel-alpha", "duel-alpha"]})
        assert twice["status"] == 400
        # A pick the key may not use is refused by name: the user typed it.
        barred = await refused({"key_id": world["draw_key"], "models": ["duel-broken"]})
        assert barred["status"] == 403 and "duel-broken" in barred["message"]
        # Its request id would lead to a log entry naming the model drawn beside it.
        assert "request_id" not in barred
        flag = await refused({"key_id": world["all_key"], "arena": "yes"})
        assert flag["status"] == 400 and "'arena'" in flag["message"]
        mixed = await refused(
            {"key_id": world["all_key"], "messages_by_side": {"a": MESSAGES, "b": MESSAGES}, "messages": MESSAGES}
        )
        assert mixed["status"] == 400
        # A plain run cannot become a battle.
        await ws.send_json_to(
            {"type": "chat", "key_id": world["all_key"], "models": ["duel-alpha"], "messages": MESSAGES}
        )
        plain = await ws.receive_json_from(timeout=5)
        await until_complete(ws)
        not_arena = await refused({"key_id": world["all_key"], "run_id": plain["run_id"]})
        assert (not_arena["status"], not_arena["code"]) == (400, "not_an_arena_run")
    finally:
        await ws.disconnect()


async def test_a_draw_needs_two_usable_models(world):
    # With the other provider marked down too, the draw tier has no chat model left to draw.
    blue = await sync_to_async(Provider.objects.get)(name="prov-blue")
    redis_sync().set(HEALTH_DOWN_KEY.format(provider_id=blue.pk), "health check failed")
    ws = await session_socket(world["ann"])
    try:
        await ws.send_json_to({"type": "chat", "arena": True, "key_id": world["draw_key"], "messages": MESSAGES})
        answer = await ws.receive_json_from(timeout=5)
    finally:
        await ws.disconnect()
    assert (answer["status"], answer["code"]) == (400, "arena_needs_two_models")
    assert await sync_to_async(PlaygroundRun.objects.count)() == 0


def test_every_event_kind_comes_out_blind_and_unknown_fields_stay_out():
    side_of = {"m-one": "a", "m-two": "b"}
    done = {
        "type": "done",
        "model": "m-one",
        "served_model": "up-one",
        "route": "rule:x",
        "request_id": "req_1",
        "provider": "p",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "cost": 0.5,
        "ttft_ms": 3.0,
        "new_field_naming_the_model": "m-one",
    }
    assert arena_event(done, side_of) == {
        "type": "done",
        "side": "a",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "ttft_ms": 3.0,
    }
    error = {"type": "error", "model": "m-two", "status": 502, "code": "upstream_error", "message": "m-two at p"}
    assert arena_event(error, side_of) == {
        "type": "error",
        "side": "b",
        "status": 502,
        "code": "upstream_error",
        "message": "Model B could not answer.",
    }
    assert arena_event({"type": "chunk", "model": "other", "content": "x"}, side_of) is None
    complete = {
        "type": "complete",
        "run_id": "cmp_1",
        "results": {
            "m-one": {"status": "done", "request_id": "req_1", "finish_reason": "stop", "usage": {}},
            "m-two": {"status": "error", "request_id": "req_2", "error": {"status": 502, "code": "x", "message": "p"}},
        },
    }
    assert "run_id" not in arena_event(complete, side_of)
    assert arena_event(complete, side_of)["results"] == {
        "a": {"status": "done", "finish_reason": "stop", "usage": {}},
        "b": {"status": "error", "error": {"status": 502, "code": "x", "message": "Model B could not answer."}},
    }
    turn = {
        "prompt": "hi",
        "status": "complete",
        "models": ["m-one", "m-two"],
        "arena": {"battle_id": "bat_1", "sides": {"a": "m-two", "b": "m-one"}},
        "answers": {
            "m-one": {"status": "done", "text": "one", "request_id": "req_1", "done": done},
            "m-two": {"status": "error", "text": "", "error": {"status": 502, "code": "x", "message": "m-two"}},
        },
    }
    view = arena_turn_view(turn)
    assert view["models"] == ["a", "b"] and view["answers"]["b"]["text"] == "one"
    assert "m-one" not in orjson.dumps(view).decode() and "m-two" not in orjson.dumps(view).decode()
    revealed = arena_turn_view({**turn, "arena": {**turn["arena"], "vote": "a", "reveal": {"a": {"model": "m-two"}}}})
    assert revealed["answers"]["b"]["done"]["served_model"] == "up-one"


def test_a_battle_in_a_fixed_order_keeps_it():
    for _ in range(20):
        battle = arena_battle_start(user_id=1, team_id=None, models=["x-1", "x-2"], prompt="p", shuffle=False)
        assert (battle.model_a, battle.model_b) == ("x-1", "x-2")
    with pytest.raises(GatewayError) as refused:
        arena_battle_start(user_id=1, team_id=None, models=["x-1", "x-2", "x-3"], prompt="p", shuffle=False)
    assert refused.value.code == "arena_needs_two_models"


def test_a_vote_on_a_battle_of_another_user_is_refused(world):
    battle = arena_battle_start(user_id=world["ann"].pk, team_id=None, models=["x-1", "x-2"], prompt="p")
    for side in "ab":
        arena_answer_record(battle_id=battle.battle_id, side=side, request_id=f"req-{side}", ok=True)
    with pytest.raises(GatewayError) as refused:
        playground_arena_vote(user_id=world["ben"].pk, battle_id=battle.battle_id, outcome="a")
    assert refused.value.status == 404
    # Its own user may; a battle not tied to a saved run still answers with the reveal.
    assert playground_arena_vote(user_id=world["ann"].pk, battle_id=battle.battle_id, outcome="a")["a"]["model"]
