"""A playground turn started on one gateway process is resumed on another: real uvicorn processes over loopback,
sharing the test database and Redis, the simulator upstream. The socket that started it goes away mid-stream; a
`resume` frame on the other process gets every later frame once, live to the end, and the turn is saved."""

import time

import orjson
import pytest
from django.contrib.auth import get_user_model
from websockets.sync.client import connect as ws_connect

from accounts.models import PlaygroundRun, Tier
from accounts.services import api_key_issue
from tests.support.data import model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "A long answer, please"}]
TOKENS = 60
FRAME_TIMEOUT = 10.0


def ws_url(gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/ws/playground/"


def frames_until_complete(ws, frames: list[dict]) -> list[dict]:
    deadline = time.monotonic() + 30
    while not frames or frames[-1]["type"] != "complete":
        assert time.monotonic() < deadline, frames[-3:]
        frames.append(orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)))
    return frames


def text(frames, model) -> str:
    return "".join(f["content"] for f in frames if f.get("model") == model and f["type"] == "chunk")


def test_a_turn_started_on_one_process_is_resumed_on_another(gateway, gateway_factory, fresh_simulator):
    other = gateway_factory()
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("e2e-slow", [(sim, f"sim-echo?tokens={TOKENS}&interval_ms=40", 0)])
    model_create("e2e-slow-2", [(sim, f"sim-mini?tokens={TOKENS}&interval_ms=50", 0)])
    owner = get_user_model().objects.create_user("e2e-owner")
    key = api_key_issue(owner=owner, tier=Tier.objects.create(name="e2e", max_compare_models=2), name="e2e").plaintext
    headers = {"Authorization": f"Bearer {key}"}
    models = ["e2e-slow", "e2e-slow-2"]

    with ws_connect(ws_url(gateway), additional_headers=headers) as first:
        assert orjson.loads(first.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        first.send(orjson.dumps({"type": "chat", "models": models, "messages": MESSAGES}).decode())
        saved = orjson.loads(first.recv(timeout=FRAME_TIMEOUT))
        assert saved["type"] == "saved"
        before = []
        while len([f for f in before if f["type"] == "chunk"]) < 10:
            before.append(orjson.loads(first.recv(timeout=FRAME_TIMEOUT)))
    after = before[-1]["seq"]

    with ws_connect(ws_url(other), additional_headers=headers) as second:
        assert orjson.loads(second.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        second.send(orjson.dumps({"type": "resume", "run_id": saved["run_id"], "after": after}).decode())
        resumed = orjson.loads(second.recv(timeout=FRAME_TIMEOUT))
        assert resumed == {"type": "resumed", "run_id": saved["run_id"], "turn": 0, "after": after}
        rest = frames_until_complete(second, [])

    assert [f["seq"] for f in before] == list(range(1, after + 1))
    assert [f["seq"] for f in rest] == list(range(after + 1, after + 1 + len(rest)))  # no gap, no duplicate
    whole = before + rest
    assert {m: r["status"] for m, r in rest[-1]["results"].items()} == dict.fromkeys(models, "done")

    def saved_complete():
        return PlaygroundRun.objects.get(pk=saved["run_id"]).turns[0]["status"] == "complete"

    eventually(saved_complete, timeout=5, what="the turn saved")
    run = PlaygroundRun.objects.get(pk=saved["run_id"])
    assert run.user_id == owner.pk and run.active_stream_id == ""
    for model in models:
        assert len(text(whole, model).split()) == TOKENS
        assert run.turns[0]["answers"][model]["text"] == text(whole, model)
    # The providers were asked once each, and never cut off: the first socket leaving did not stop the run.
    records = [r for r in fresh_simulator.requests() if r["body"]]
    assert len(records) == 2 and not any(r["disconnected"] for r in records)


def test_a_cancel_on_another_process_stops_the_run_and_ends_its_turn(gateway, gateway_factory, fresh_simulator):
    other = gateway_factory()
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("e2e-long", [(sim, "sim-echo?tokens=400&interval_ms=40", 0)])
    owner = get_user_model().objects.create_user("e2e-canceller")
    key = api_key_issue(owner=owner, tier=Tier.objects.create(name="e2e-c"), name="e2e-c").plaintext
    headers = {"Authorization": f"Bearer {key}"}
    with ws_connect(ws_url(gateway), additional_headers=headers) as first:
        assert orjson.loads(first.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        first.send(orjson.dumps({"type": "chat", "models": ["e2e-long"], "messages": MESSAGES}).decode())
        run_id = orjson.loads(first.recv(timeout=FRAME_TIMEOUT))["run_id"]
        while orjson.loads(first.recv(timeout=FRAME_TIMEOUT))["type"] != "chunk":
            pass
    with ws_connect(ws_url(other), additional_headers=headers) as second:
        assert orjson.loads(second.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        second.send(orjson.dumps({"type": "resume", "run_id": run_id, "after": 0}).decode())
        frames = []
        while len([f for f in frames if f["type"] == "chunk"]) < 5:
            frames.append(orjson.loads(second.recv(timeout=FRAME_TIMEOUT)))
        second.send('{"type": "cancel"}')
        cancelled_at = time.monotonic()
        frames = frames_until_complete(second, frames)
        stopped_after = time.monotonic() - cancelled_at
    # The run ran on the first process: told through Redis, it stopped within a tick or two.
    assert stopped_after < 3.0, stopped_after
    assert frames[-1]["results"] == {"e2e-long": {"status": "cancelled"}}
    [record] = fresh_simulator.wait_for_requests(lambda recs: recs and recs[0]["disconnected"], timeout=5)
    assert record["tokens_sent"] < 200
    run = PlaygroundRun.objects.get(pk=run_id)
    assert run.active_stream_id == "" and run.turns[0]["status"] == "cancelled"
    answer = run.turns[0]["answers"]["e2e-long"]
    assert answer["status"] == "cancelled" and answer["text"] == text(frames, "e2e-long")
    assert 0 < len(answer["text"].split()) < 400
