"""The playground socket saves every run per user and resumes a turn after its socket went away: driven in process
with channels' WebsocketCommunicator through the real ASGI application, relaying to the simulator over loopback
HTTP, the resume buffer in the real Redis."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import PlaygroundRun, Tier
from accounts.services import api_key_issue
from accounts.usage import usage_retry_buffer_size
from aigateway.asgi import application
from aigateway.config_watch import config_watch
from providers.upstream import upstream_clients_close
from streaming.relay import background_drain
from tests.support.data import model_create, provider_create
from tests.support.usage import await_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me a long story"}]
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
SLOW_TOKENS = 60


@pytest.fixture(autouse=True)
async def close_upstream_clients():
    yield
    await background_drain()
    await upstream_clients_close()
    assert usage_retry_buffer_size() == 0


@pytest.fixture
def setup(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("rs-fast", [(sim, "sim-echo?tokens=6&interval_ms=10", 0)])
    model_create("rs-slow", [(sim, f"sim-echo?tokens={SLOW_TOKENS}&interval_ms=40", 0)])
    model_create("rs-slow-2", [(sim, f"sim-mini?tokens={SLOW_TOKENS}&interval_ms=45", 0)])
    User = get_user_model()
    tier = Tier.objects.create(name="rs-tier", max_compare_models=3)
    ann = User.objects.create_user("ann", password="pw-ann-123456")
    ben = User.objects.create_user("ben", password="pw-ben-123456")
    ann_key = api_key_issue(owner=ann, tier=tier, name="ann-key")
    api_key_issue(owner=ben, tier=tier, name="ben-key")
    config_watch.invalidate()
    return {"ann": ann, "ben": ben, "ann_key": ann_key}


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


async def key_socket(plaintext: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(
        application, "/ws/playground/", headers=[(b"authorization", f"Bearer {plaintext}".encode())]
    )
    connected, _ = await ws.connect(timeout=5)
    assert connected
    assert await ws.receive_json_from(timeout=5) == {"type": "ready", "auth": "key"}
    return ws


async def until_complete(ws, frames=None, timeout: float = 20.0) -> list[dict]:
    frames = [] if frames is None else frames
    async with asyncio.timeout(timeout):
        while not frames or frames[-1]["type"] != "complete":
            frames.append(await ws.receive_json_from(timeout=timeout))
    return frames


def text(frames, model) -> str:
    return "".join(f["content"] for f in frames if f.get("model") == model and f["type"] == "chunk")


def seqs(frames) -> list[int]:
    return [f["seq"] for f in frames if "seq" in f]


def saved_run(run_id: int) -> PlaygroundRun:
    return PlaygroundRun.objects.get(pk=run_id)


async def eventually_saved(run_id: int, turn: int, timeout: float = 15.0) -> PlaygroundRun:
    async with asyncio.timeout(timeout):
        while True:
            run = await sync_to_async(saved_run)(run_id)
            if len(run.turns) > turn and run.turns[turn]["status"] != "running":
                return run
            await asyncio.sleep(0.05)


async def test_a_chat_is_saved_for_the_user_and_continued_by_its_run_id(setup):
    ws = await session_socket(setup["ann"])
    try:
        await ws.send_json_to({"type": "chat", "models": ["rs-fast", "rs-slow"], "messages": MESSAGES, "max_tokens": 9})
        saved = await ws.receive_json_from(timeout=5)
        assert saved["type"] == "saved" and saved["turn"] == 0
        run_id = saved["run_id"]
        frames = await until_complete(ws)
        # Every event of the run carries its place in the stream: 1, 2, 3, ... with no gap.
        assert seqs(frames) == list(range(1, len(frames) + 1))
        run = await sync_to_async(saved_run)(run_id)
        assert run.user_id == setup["ann"].pk and run.title == "Tell me a long story"
        assert run.model_names == ["rs-fast", "rs-slow"] and run.active_stream_id == ""
        assert run.options == {"key_id": setup["ann_key"].api_key.id, "system": "", "max_tokens": 9}
        [turn] = run.turns
        assert turn["status"] == "complete" and turn["prompt"] == "Tell me a long story"
        for model in ("rs-fast", "rs-slow"):
            answer = turn["answers"][model]
            [done] = [f for f in frames if f["type"] == "done" and f["model"] == model]
            assert answer["status"] == "done" and answer["text"] == text(frames, model) != ""
            assert answer["done"]["usage"] == done["usage"] and answer["done"]["cost"] == done["cost"]
            assert (
                answer["done"]["ttft_ms"] == done["ttft_ms"]
                and answer["done"]["finish_reason"] == done["finish_reason"]
            )
        assert turn["answers"]["rs-slow"]["done"]["finish_reason"] == "length"

        # The next turn of the same conversation: the page sends its run id.
        follow_up = [*MESSAGES, {"role": "assistant", "content": "..."}, {"role": "user", "content": "Go on"}]
        await ws.send_json_to({"type": "chat", "models": ["rs-fast"], "messages": follow_up, "run_id": run_id})
        assert await ws.receive_json_from(timeout=5) == {"type": "saved", "run_id": run_id, "turn": 1}
        frames = await until_complete(ws)
        assert seqs(frames) == list(range(1, len(frames) + 1))  # a new stream: counted afresh
        run = await sync_to_async(saved_run)(run_id)
        assert [t["prompt"] for t in run.turns] == ["Tell me a long story", "Go on"]
        assert run.turns[1]["answers"]["rs-fast"]["text"] == text(frames, "rs-fast")
        assert await sync_to_async(PlaygroundRun.objects.count)() == 1
    finally:
        await ws.disconnect()


async def test_another_users_run_cannot_be_continued_or_resumed(setup):
    ben = await session_socket(setup["ben"])
    try:
        await ben.send_json_to({"type": "chat", "models": ["rs-fast"], "messages": MESSAGES})
        bens_run = (await ben.receive_json_from(timeout=5))["run_id"]
        await until_complete(ben)
    finally:
        await ben.disconnect()
    ann = await session_socket(setup["ann"])
    try:
        for frame in (
            {"type": "chat", "models": ["rs-fast"], "messages": MESSAGES, "run_id": bens_run},
            {"type": "resume", "run_id": bens_run, "after": 0},
        ):
            await ann.send_json_to(frame)
            error = await ann.receive_json_from(timeout=5)
            assert error["type"] == "error" and "model" not in error, error
            assert (error["status"], error["code"]) == (404, "run_not_found"), error
        for frame, param in (
            ({"type": "chat", "models": ["rs-fast"], "messages": MESSAGES, "run_id": "1"}, "run_id"),
            ({"type": "resume", "after": 0}, "run_id"),
            ({"type": "resume", "run_id": bens_run, "after": -1}, "after"),
        ):
            await ann.send_json_to(frame)
            error = await ann.receive_json_from(timeout=5)
            assert error["status"] == 400 and param in error["message"], error
        run = await sync_to_async(saved_run)(bens_run)
        assert len(run.turns) == 1 and run.user_id == setup["ben"].pk
        assert not await sync_to_async(PlaygroundRun.objects.filter(user=setup["ann"]).exists)()
        # The socket still works.
        await ann.send_json_to({"type": "chat", "models": ["rs-fast"], "messages": MESSAGES})
        assert (await ann.receive_json_from(timeout=5))["type"] == "saved"
        assert (await until_complete(ann))[-1]["results"]["rs-fast"]["status"] == "done"
    finally:
        await ann.disconnect()


async def test_resume_after_n_sends_every_later_event_once(setup):
    first = await session_socket(setup["ann"])
    await first.send_json_to({"type": "chat", "models": ["rs-slow", "rs-slow-2"], "messages": MESSAGES})
    run_id = (await first.receive_json_from(timeout=5))["run_id"]
    before = []
    while len([f for f in before if f["type"] == "chunk"]) < 12:
        before.append(await first.receive_json_from(timeout=5))
    await first.disconnect()  # the page reloads mid-stream
    after = before[-1]["seq"]
    assert seqs(before) == list(range(1, after + 1))

    second = await session_socket(setup["ann"])
    try:
        await second.send_json_to({"type": "resume", "run_id": run_id, "after": after})
        assert await second.receive_json_from(timeout=5) == {
            "type": "resumed",
            "run_id": run_id,
            "turn": 0,
            "after": after,
        }
        rest = await until_complete(second)
    finally:
        await second.disconnect()
    # No gap, no duplicate: the rest starts right after the last event seen.
    assert seqs(rest) == list(range(after + 1, after + 1 + len(rest)))
    whole = before + rest
    run = await sync_to_async(saved_run)(run_id)
    for model in ("rs-slow", "rs-slow-2"):
        assert len(text(whole, model).split()) == SLOW_TOKENS
        assert text(whole, model) == run.turns[0]["answers"][model]["text"]
        assert [f["type"] for f in whole if f.get("model") == model][-1] == "done"
    assert {model: r["status"] for model, r in rest[-1]["results"].items()} == {"rs-slow": "done", "rs-slow-2": "done"}

    # A reload after the end (within the grace): the whole turn again from its first event.
    third = await session_socket(setup["ann"])
    try:
        await third.send_json_to({"type": "resume", "run_id": run_id, "after": 0})
        assert (await third.receive_json_from(timeout=5))["type"] == "resumed"
        again = await until_complete(third)
    finally:
        await third.disconnect()
    assert again == whole
    # Each model was one call, booked once, in full.
    events = await await_usage(lambda evs: len(evs) == 2)
    assert {(e["model"], e["status_code"], e["completion_tokens"]) for e in events} == {
        ("rs-slow", 200, SLOW_TOKENS),
        ("rs-slow-2", 200, SLOW_TOKENS),
    }


async def test_a_run_nobody_reads_goes_on_and_ends_saved(setup, fresh_simulator):
    """The turn is saved by the run itself: its socket closed right after it started, and nobody resumed it."""
    ws = await session_socket(setup["ann"])
    await ws.send_json_to({"type": "chat", "models": ["rs-slow", "rs-fast"], "messages": MESSAGES})
    run_id = (await ws.receive_json_from(timeout=5))["run_id"]
    await ws.disconnect()
    running = await sync_to_async(saved_run)(run_id)
    assert running.active_stream_id and running.turns[0]["status"] == "running"
    run = await eventually_saved(run_id, 0)
    assert run.turns[0]["status"] == "complete" and run.active_stream_id == ""
    assert len(run.turns[0]["answers"]["rs-slow"]["text"].split()) == SLOW_TOKENS
    assert {a["status"] for a in run.turns[0]["answers"].values()} == {"done"}
    assert not [r for r in fresh_simulator.requests() if r["disconnected"]]


async def test_a_key_socket_saves_under_the_keys_owner_and_may_cancel_a_resumed_run(setup, fresh_simulator):
    key = setup["ann_key"].plaintext
    ws = await key_socket(key)
    await ws.send_json_to({"type": "chat", "models": ["rs-slow"], "messages": MESSAGES})
    run_id = (await ws.receive_json_from(timeout=5))["run_id"]
    while (await ws.receive_json_from(timeout=5))["type"] != "chunk":
        pass
    await ws.disconnect()
    run = await sync_to_async(saved_run)(run_id)
    assert run.user_id == setup["ann"].pk

    # The owner's browser follows it, then stops it.
    browser = await session_socket(setup["ann"])
    try:
        await browser.send_json_to({"type": "resume", "run_id": run_id, "after": 0})
        assert (await browser.receive_json_from(timeout=5))["type"] == "resumed"
        frames = []
        while len([f for f in frames if f["type"] == "chunk"]) < 5:
            frames.append(await browser.receive_json_from(timeout=5))
        await browser.send_json_to({"type": "cancel"})
        frames = await until_complete(browser, frames)
    finally:
        await browser.disconnect()
    cancelled = [f for f in frames if f["type"] == "error" and f.get("model") == "rs-slow"]
    assert cancelled and cancelled[-1]["status"] == 499
    assert frames[-1]["results"]["rs-slow"]["status"] == "cancelled"
    await fresh_simulator.await_requests(lambda recs: recs and recs[0]["disconnected"], timeout=3)
    run = await eventually_saved(run_id, 0)
    answer = run.turns[0]["answers"]["rs-slow"]
    assert answer["status"] == "cancelled" and answer["text"] == text(frames, "rs-slow")
    assert 0 < len(answer["text"].split()) < SLOW_TOKENS
    [event] = await await_usage(lambda evs: len(evs) == 1)
    assert event["status_code"] == 499


async def test_a_turn_whose_stream_is_gone_is_told_and_marked_interrupted(setup):
    run = await sync_to_async(PlaygroundRun.objects.create)(
        user=setup["ann"],
        title="lost",
        model_names=["rs-fast"],
        turns=[
            {
                "prompt": "lost",
                "models": ["rs-fast"],
                "status": "running",
                "stream_id": "rs_gone",
                "answers": {"rs-fast": {"status": "running", "text": ""}},
            }
        ],
        active_stream_id="rs_gone",
    )
    ws = await session_socket(setup["ann"])
    try:
        await ws.send_json_to({"type": "resume", "run_id": run.pk, "after": 0})
        error = await ws.receive_json_from(timeout=5)
        assert (error["status"], error["code"]) == (410, "stream_ended"), error
    finally:
        await ws.disconnect()
    run = await sync_to_async(saved_run)(run.pk)
    assert run.active_stream_id == "" and run.turns[0]["status"] == "interrupted"
