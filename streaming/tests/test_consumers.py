"""The playground websocket, driven in process with channels' WebsocketCommunicator through the real ASGI
application (origin guard, session auth, consumer), relaying to the simulator over loopback HTTP."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import ApiKey, Tier
from accounts.services import api_key_issue
from accounts.usage import usage_retry_buffer_size
from aigateway.asgi import application
from aigateway.config_watch import config_watch
from providers.upstream import upstream_clients_close
from streaming.relay import background_drain
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import await_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello over a websocket"}]
ORIGIN = (b"origin", b"http://127.0.0.1:8000")


@pytest.fixture(autouse=True)
async def close_upstream_clients():
    yield
    # A run's usage push is spawned as its stream ends; the test's event loop must not cancel it.
    await background_drain()
    await upstream_clients_close()
    assert usage_retry_buffer_size() == 0  # every usage event reached Redis


@pytest.fixture
def setup(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("ws-fast", [(sim, "sim-echo?tokens=6&interval_ms=20", 0)])
    model_create("ws-other", [(sim, "sim-mini?tokens=5&interval_ms=25", 0)])
    model_create("ws-broken", [(sim, "sim-echo?fail=503", 0)])
    model_create("ws-slow", [(sim, "sim-echo?tokens=80&interval_ms=50", 0)])
    model_create("ws-slow-2", [(sim, "sim-mini?tokens=81&interval_ms=50", 0)])
    User = get_user_model()
    alice = User.objects.create_user("alice", password="pw-alice-1234")
    tier = Tier.objects.create(name="ws-tier", max_compare_models=3)
    alice_key = api_key_issue(owner=alice, tier=tier, name="alice-key").api_key
    config_watch.invalidate()
    return {"alice": alice, "alice_key": alice_key, "tier": tier}


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(*headers) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/playground/", headers=list(headers))
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def session_socket(user, origin=ORIGIN) -> WebsocketCommunicator:
    cookie = await sync_to_async(session_cookie)(user)
    communicator = await connect((b"cookie", cookie), origin)
    assert await communicator.receive_json_from(timeout=5) == {"type": "ready", "auth": "session"}
    return communicator


async def until_complete(communicator, timeout: float = 15.0) -> list[dict]:
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await communicator.receive_json_from(timeout=timeout)
            frames.append(frame)
            if frame["type"] == "complete":
                return frames


def of(frames, model, kind=None):
    return [f for f in frames if f.get("model") == model and (kind is None or f["type"] == kind)]


def text(frames, model) -> str:
    return "".join(f["content"] for f in of(frames, model, "chunk"))


async def test_session_socket_streams_two_models_and_runs_again(setup):
    ws = await session_socket(setup["alice"])
    try:
        for turn in range(2):
            await ws.send_json_to({"type": "chat", "models": ["ws-fast", "ws-other"], "messages": MESSAGES})
            frames = await until_complete(ws)
            assert len(text(frames, "ws-fast").split()) == 6
            assert len(text(frames, "ws-other").split()) == 5
            results = frames[-1]["results"]
            assert {m: r["status"] for m, r in results.items()} == {"ws-fast": "done", "ws-other": "done"}, turn
        # The run paid with alice's own key, recorded as compare usage.
        events = await await_usage(lambda evs: len([e for e in evs if e["endpoint"] == "compare"]) == 4)
        assert {e["api_key_id"] for e in events} == {setup["alice_key"].id}
    finally:
        await ws.disconnect()


async def test_an_idle_socket_stays_open(setup):
    """The channel layer blocks on Redis for 5 s at a time: a socket idle for longer must survive it."""
    ws = await session_socket(setup["alice"])
    try:
        await asyncio.sleep(6.5)
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES})
        assert (await until_complete(ws))[-1]["results"]["ws-fast"]["status"] == "done"
    finally:
        await ws.disconnect()


async def test_session_socket_needs_one_of_our_origins(setup):
    cookie = await sync_to_async(session_cookie)(setup["alice"])
    communicator = WebsocketCommunicator(
        application, "/ws/playground/", headers=[(b"cookie", cookie), (b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    await communicator.disconnect()
    # Without Origin (no browser page): a program, told to send a key; the cookie it carries is not used.
    ws = await connect((b"cookie", cookie))
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["status"] == 401 and "send an API key" in frame["message"]
    assert (await ws.receive_output(timeout=5))["code"] == 4401
    await ws.disconnect()


async def test_socket_without_session_or_key_is_refused(setup):
    ws = await connect(ORIGIN)
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["status"] == 401
    assert (await ws.receive_output(timeout=5))["code"] == 4401
    await ws.disconnect()


async def test_bearer_key_socket_needs_no_origin(setup):
    key = await sync_to_async(key_create)("ws-bearer")
    ws = await connect((b"authorization", f"Bearer {key}".encode()))
    try:
        assert await ws.receive_json_from(timeout=5) == {"type": "ready", "auth": "key"}
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES, "max_tokens": 3})
        frames = await until_complete(ws)
        assert len(text(frames, "ws-fast").split()) == 3
        assert of(frames, "ws-fast", "done")[0]["finish_reason"] == "length"
    finally:
        await ws.disconnect()


async def test_bad_key_gets_an_error_frame_and_a_close(setup):
    ws = await connect((b"authorization", b"Bearer sk-gw-" + b"z" * 40))
    frame = await ws.receive_json_from(timeout=5)
    assert frame["status"] == 401 and "invalid" in frame["message"]
    assert "zzzz" not in frame["message"]
    assert (await ws.receive_output(timeout=5))["code"] == 4401
    await ws.disconnect()


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(setup):
    ws = await session_socket(setup["alice"])
    try:
        cases = [
            ("{not json", "not valid JSON"),
            ("[1, 2]", "must be a JSON object"),
            ('{"models": ["ws-fast"]}', "no 'type'"),
            ('{"type": "shout"}', "unknown frame type 'shout'"),
            ('{"type": "chat", "messages": []}', "'models' is required"),
            ('{"type": "chat", "models": ["ws-fast"]}', "'messages'"),
            ('{"type": "chat", "models": ["nope"], "messages": [{"role": "user", "content": "x"}]}', "'nope'"),
            ('{"type": "chat", "models": ["ws-fast"], "messages": [{"role": "user", "content": "x"}], "key_id": "1"}',
             "key_id"),
            ('{"type": "cancel"}', "no run in progress"),
        ]  # fmt: skip
        for raw, needle in cases:
            await ws.send_to(text_data=raw)
            frame = await ws.receive_json_from(timeout=5)
            assert frame["type"] == "error" and "model" not in frame, raw
            assert needle in frame["message"], (raw, frame)
            assert frame["status"] in (400, 404, 409)
        await ws.send_to(bytes_data=b"\x00\x01")
        assert "binary" in (await ws.receive_json_from(timeout=5))["message"]
        # Still open and working.
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES})
        frames = await until_complete(ws)
        assert frames[-1]["results"]["ws-fast"]["status"] == "done"
    finally:
        await ws.disconnect()


async def test_healthy_and_failing_model(setup):
    ws = await session_socket(setup["alice"])
    try:
        await ws.send_json_to({"type": "chat", "models": ["ws-fast", "ws-broken"], "messages": MESSAGES})
        frames = await until_complete(ws)
        assert len(text(frames, "ws-fast").split()) == 6 and of(frames, "ws-fast", "done")
        [error] = of(frames, "ws-broken", "error")
        assert error["status"] == 502 and not of(frames, "ws-broken", "chunk")
    finally:
        await ws.disconnect()


async def test_cancel_stops_the_run_then_the_socket_runs_again(setup, fresh_simulator):
    ws = await session_socket(setup["alice"])
    try:
        await ws.send_json_to({"type": "chat", "models": ["ws-slow", "ws-slow-2"], "messages": MESSAGES})
        frames = []
        while len([f for f in frames if f["type"] == "chunk"]) < 6:
            frames.append(await ws.receive_json_from(timeout=5))
        # A second chat while one runs is refused; the run goes on.
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES})
        await ws.send_json_to({"type": "cancel"})
        frames += await until_complete(ws)
        busy = [f for f in frames if f["type"] == "error" and "model" not in f]
        assert busy and busy[0]["status"] == 409
        for model in ("ws-slow", "ws-slow-2"):
            cancelled = of(frames, model, "error")
            assert cancelled and cancelled[-1]["status"] == 499 and cancelled[-1]["code"] == "cancelled"
            assert frames[-1]["results"][model]["status"] == "cancelled"
        records = await fresh_simulator.await_requests(
            lambda recs: len([r for r in recs if r["disconnected"]]) == 2, timeout=3
        )
        assert all(r["tokens_sent"] < 40 for r in records if r["disconnected"])
        events = await await_usage(lambda evs: len([e for e in evs if e["status_code"] == 499]) == 2)
        cancelled_usage = [e for e in events if e["status_code"] == 499]
        assert {e["model"] for e in cancelled_usage} == {"ws-slow", "ws-slow-2"}
        for event in cancelled_usage:
            seen = len(of(frames, event["model"], "chunk"))
            assert seen <= event["completion_tokens"] <= seen + 3
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES})
        assert (await until_complete(ws))[-1]["results"]["ws-fast"]["status"] == "done"
    finally:
        await ws.disconnect()


async def test_closing_the_socket_stops_the_run_once_nobody_resumes_it(setup, fresh_simulator, settings):
    """A socket that closes leaves its run going for the resume grace (a reloading page picks it up); with nobody
    back, the run stops then: every upstream closed, each model booked as 499."""
    settings.GATEWAY_RESUME_GRACE_SECONDS = 1.0
    ws = await session_socket(setup["alice"])
    await ws.send_json_to({"type": "chat", "models": ["ws-slow", "ws-slow-2"], "messages": MESSAGES})
    chunks = 0
    while chunks < 4:
        chunks += (await ws.receive_json_from(timeout=5))["type"] == "chunk"
    await ws.disconnect()
    await asyncio.sleep(0.5)
    assert not [r for r in fresh_simulator.requests() if r["disconnected"]]  # still going, for a resume
    await fresh_simulator.await_requests(lambda recs: len([r for r in recs if r["disconnected"]]) == 2, timeout=3)
    events = await await_usage(lambda evs: len([e for e in evs if e["status_code"] == 499]) == 2)
    assert {e["model"] for e in events if e["status_code"] == 499} == {"ws-slow", "ws-slow-2"}


async def test_session_key_choice_is_checked(setup):
    User = get_user_model()
    bob = await sync_to_async(User.objects.create_user)("bob", password="pw-bob-12345")
    bob_key = await sync_to_async(api_key_issue)(owner=bob, tier=setup["tier"], name="bob-key")
    ws = await session_socket(setup["alice"])
    try:
        chat = {"type": "chat", "models": ["ws-fast"], "messages": MESSAGES}
        await ws.send_json_to({**chat, "key_id": bob_key.api_key.id})
        frame = await ws.receive_json_from(timeout=5)
        assert frame["status"] == 403 and "not one of your" in frame["message"]
        await ws.send_json_to({**chat, "key_id": setup["alice_key"].id})
        assert (await until_complete(ws))[-1]["results"]["ws-fast"]["status"] == "done"
    finally:
        await ws.disconnect()


async def test_user_without_keys(setup, settings):
    settings.GATEWAY_PLAYGROUND_TIER = "ws-playground"
    User = get_user_model()
    carol = await sync_to_async(User.objects.create_user)("carol", password="pw-carol-1234")
    ws = await session_socket(carol)
    try:
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES})
        frame = await ws.receive_json_from(timeout=5)
        assert frame["status"] == 403 and frame["code"] == "no_usable_key"
    finally:
        await ws.disconnect()
    staff = await sync_to_async(User.objects.create_user)("sam", password="pw-sam-12345", is_staff=True)
    ws = await session_socket(staff)
    try:
        await ws.send_json_to({"type": "chat", "models": ["ws-fast"], "messages": MESSAGES})
        assert (await until_complete(ws))[-1]["results"]["ws-fast"]["status"] == "done"
    finally:
        await ws.disconnect()
    keys = await sync_to_async(list)(ApiKey.objects.filter(owner=staff).select_related("tier"))
    assert len(keys) == 1 and keys[0].playground and keys[0].tier.name == "ws-playground"
    assert len(keys[0].key_hash) == 64
