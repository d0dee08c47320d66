"""The playground's saved runs (streaming.playground_runs) and the page's JSON endpoints over them: each user sees
and continues only their own runs, a user keeps at most GATEWAY_PLAYGROUND_HISTORY_MAX, and a turn's answers are
taken from the compare events as they went by."""

import pytest
from django.contrib.auth import get_user_model

from accounts.models import PlaygroundRun
from aigateway.errors import GatewayError
from streaming.playground_runs import (
    TITLE_MAX,
    TurnRecorder,
    playground_run_get,
    playground_run_stream_lost,
    playground_run_turn_save,
    playground_run_turn_start,
    playground_runs_list,
    playground_turn_prompt,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def users():
    User = get_user_model()
    return User.objects.create_user("ann", password="pw-ann-123456"), User.objects.create_user(
        "ben", password="pw-ben-1234"
    )


def start(user, prompt="Hello there", *, run_id=None, models=("m-a", "m-b"), stream_id="rs_1"):
    return playground_run_turn_start(
        user_id=user.pk,
        team_id=None,
        run_id=run_id,
        models=list(models),
        prompt=prompt,
        system="",
        options={"key_id": 1},
        stream_id=stream_id,
    )


def test_a_new_turn_makes_a_run_and_the_next_turn_continues_it(users):
    ann, _ = users
    run, index = start(ann, "  What is\n a   relay?  ")
    assert index == 0 and run.title == "What is a relay?"
    assert run.model_names == ["m-a", "m-b"] and run.active_stream_id == "rs_1"
    assert run.turns[0]["status"] == "running" and run.turns[0]["answers"]["m-a"]["status"] == "running"

    assert playground_run_turn_save(run_id=run.pk, turn_index=0, stream_id="rs_1", answers={"m-a": {"status": "done"}})
    run, index = start(ann, "And a compare run?", run_id=run.pk, models=["m-b", "m-c"], stream_id="rs_2")
    assert index == 1 and len(run.turns) == 2
    assert run.model_names == ["m-a", "m-b", "m-c"]  # every model the conversation has had, in order
    assert run.title == "What is a relay?"  # the first prompt names it
    saved = PlaygroundRun.objects.get(pk=run.pk)
    assert [t["prompt"] for t in saved.turns] == ["  What is\n a   relay?  ", "And a compare run?"]
    assert saved.turns[0]["status"] == "complete" and saved.active_stream_id == "rs_2"
    assert PlaygroundRun.objects.count() == 1


def test_long_prompts_make_short_titles(users):
    run, _ = start(users[0], "word " * 100)
    assert len(run.title) == TITLE_MAX and run.title.endswith("…")


def test_a_user_sees_and_continues_only_their_own_runs(users):
    ann, ben = users
    anns, _ = start(ann)
    bens, _ = start(ben, "Ben's question")
    assert playground_run_get(user_id=ann.pk, run_id=anns.pk) == anns
    assert playground_run_get(user_id=ann.pk, run_id=bens.pk) is None
    assert [r["id"] for r in playground_runs_list(user_id=ann.pk)] == [anns.pk]
    with pytest.raises(GatewayError) as refused:
        start(ann, "Into Ben's run", run_id=bens.pk)
    assert refused.value.status == 404 and refused.value.code == "run_not_found"
    assert len(PlaygroundRun.objects.get(pk=bens.pk).turns) == 1  # untouched


def test_a_user_keeps_at_most_the_history_cap(users, settings):
    settings.GATEWAY_PLAYGROUND_HISTORY_MAX = 3
    ann, ben = users
    bens, _ = start(ben)
    made = [start(ann, f"question {n}")[0].pk for n in range(5)]
    listed = playground_runs_list(user_id=ann.pk)
    assert [r["id"] for r in listed] == made[::-1][:3]  # newest first, the two oldest gone
    assert [r["title"] for r in listed] == ["question 4", "question 3", "question 2"]
    assert PlaygroundRun.objects.filter(pk=bens.pk).exists()  # another user's history is not theirs to trim
    # Continuing an old run makes it the most recent: the next new run trims another one.
    start(ann, "again", run_id=made[2], stream_id="rs_9")
    newest = start(ann, "question 5")[0].pk
    assert [r["id"] for r in playground_runs_list(user_id=ann.pk)] == [newest, made[2], made[4]]


def test_the_end_of_a_turn_clears_only_its_own_stream(users):
    ann, _ = users
    run, _ = start(ann, stream_id="rs_1")
    start(ann, "next", run_id=run.pk, stream_id="rs_2")
    # The first turn's save arrives late: the second turn's stream stays the active one.
    playground_run_turn_save(run_id=run.pk, turn_index=0, stream_id="rs_1", answers={})
    assert PlaygroundRun.objects.get(pk=run.pk).active_stream_id == "rs_2"
    playground_run_turn_save(run_id=run.pk, turn_index=1, stream_id="rs_2", answers={})
    assert PlaygroundRun.objects.get(pk=run.pk).active_stream_id == ""
    assert playground_run_turn_save(run_id=run.pk + 100, turn_index=0, stream_id="rs_2", answers={}) is False


def test_a_lost_stream_ends_its_turn_as_interrupted(users):
    ann, _ = users
    run, _ = start(ann, stream_id="rs_gone")
    playground_run_stream_lost(user_id=ann.pk, run_id=run.pk, stream_id="rs_gone")
    run.refresh_from_db()
    assert run.active_stream_id == "" and run.turns[0]["status"] == "interrupted"
    assert {a["status"] for a in run.turns[0]["answers"].values()} == {"interrupted"}


def test_the_recorder_keeps_each_models_answer_and_stats():
    recorder = TurnRecorder(["a", "b", "c"])
    events = [
        {"type": "start", "model": "a", "request_id": "req_a", "cache": "miss"},
        {"type": "reasoning", "model": "a", "content": "hm"},
        {"type": "chunk", "model": "a", "content": "Hello"},
        {"type": "chunk", "model": "b", "content": "Par"},
        {"type": "chunk", "model": "a", "content": " world"},
        {"type": "error", "model": "b", "status": 502, "code": "upstream_stream_error", "message": "dropped"},
        {"type": "chunk", "model": "stranger", "content": "ignored"},
        {
            "type": "done",
            "model": "a",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            "ttft_ms": 4.5,
            "cost": 0.00001,
            "provider": "sim",
        },
        {
            "type": "complete",
            "results": {"a": {"status": "done"}, "b": {"status": "error"}, "c": {"status": "cancelled"}},
        },
    ]
    for event in events:
        recorder.observe(event)
    answers = recorder.result()
    assert answers["a"]["text"] == "Hello world" and answers["a"]["reasoning"] == "hm"
    assert answers["a"]["status"] == "done" and answers["a"]["request_id"] == "req_a"
    done = answers["a"]["done"]
    assert done["finish_reason"] == "stop" and done["usage"]["total_tokens"] == 5 and done["ttft_ms"] == 4.5
    assert done["cost"] == 0.00001 and done["provider"] == "sim"
    assert answers["b"] == {
        "status": "error",
        "text": "Par",
        "error": {"status": 502, "code": "upstream_stream_error", "message": "dropped"},
    }
    assert answers["c"]["status"] == "cancelled" and answers["c"]["text"] == ""
    assert "stranger" not in answers


def test_an_unfinished_recording_is_marked_interrupted():
    recorder = TurnRecorder(["a"])
    recorder.observe({"type": "chunk", "model": "a", "content": "half"})
    assert recorder.result(unfinished="interrupted")["a"] == {"status": "interrupted", "text": "half"}
    assert recorder.result(unfinished="cancelled")["a"]["status"] == "cancelled"
    assert recorder.result()["a"]["status"] == "running"


def test_the_prompt_is_the_last_user_message():
    body = {
        "messages_by_model": {
            "a": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "answer"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
            ]
        }
    }
    assert playground_turn_prompt(body) == ("second", "Be brief.")
    assert playground_turn_prompt({"messages": [{"role": "user", "content": "hi"}]}) == ("hi", "")
    assert playground_turn_prompt({"messages": "nonsense"}) == ("", "")


def test_the_page_lists_and_opens_only_the_users_own_runs(client, users):
    ann, ben = users
    older, _ = start(ann, "older")
    newer, _ = start(ann, "newer")
    bens, _ = start(ben, "not yours")
    assert client.get("/playground/runs/").status_code == 401  # a script asks: JSON, not the login page
    client.force_login(ann)
    listed = client.get("/playground/runs/")
    assert listed.status_code == 200 and listed["Cache-Control"].startswith("max-age=0")
    runs = listed.json()["runs"]
    assert [(r["id"], r["title"], r["models"], r["running"]) for r in runs] == [
        (newer.pk, "newer", ["m-a", "m-b"], True),
        (older.pk, "older", ["m-a", "m-b"], True),
    ]
    detail = client.get(f"/playground/runs/{older.pk}/").json()
    assert detail["id"] == older.pk and detail["turns"][0]["prompt"] == "older"
    assert detail["options"] == {"key_id": 1} and detail["active_stream_id"] == "rs_1"
    missing = client.get(f"/playground/runs/{bens.pk}/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"
    assert "not yours" not in missing.content.decode()
    assert client.post("/playground/runs/").status_code in (403, 405)  # CSRF first, then GET only
