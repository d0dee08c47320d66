"""The playground websocket's figures per model: a stopped model's error frame says what its usage record bills,
and the first frame of output carries the time to first token its done frame reports. Driven in process with
channels' WebsocketCommunicator through the real ASGI application, relaying to the simulator over loopback HTTP."""

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import Tier
from accounts.services import api_key_issue
from aigateway.asgi import application
from aigateway.config_watch import config_watch
from providers.upstream import upstream_clients_close
from streaming.relay import background_drain
from tests.support.data import model_create, provider_create
from tests.support.usage import await_usage

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
PRICES = {"input_price_per_million": 3, "output_price_per_million": 15}


@pytest.fixture(autouse=True)
async def close_upstream_clients():
    yield
    await background_drain()
    await upstream_clients_close()


@pytest.fixture
def alice(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("ws-slow", [(sim, "sim-echo?tokens=200&interval_ms=20", 0)], **PRICES)
    model_create("ws-thinker", [(sim, "sim-echo?tokens=5&reasoning=3&ttft_ms=150&interval_ms=20", 0)])
    user = get_user_model().objects.create_user("alice", password="pw-alice-1234")
    api_key_issue(owner=user, tier=Tier.objects.create(name="ws-tier", max_compare_models=3), name="alice-key")
    config_watch.invalidate()
    return user


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def session_socket(user) -> WebsocketCommunicator:
    cookie = await sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(application, "/ws/playground/", headers=[(b"cookie", cookie), ORIGIN])
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "ready"
    return communicator


async def test_a_cancelled_model_reports_what_its_record_bills(alice):
    ws = await session_socket(alice)
    try:
        await ws.send_json_to({"type": "chat", "models": ["ws-slow"], "messages": [{"role": "user", "content": "go"}]})
        chunks = 0
        first = None
        while chunks < 10:
            frame = await ws.receive_json_from(timeout=5)
            if frame["type"] == "chunk":
                chunks += 1
                first = first or frame
        await ws.send_json_to({"type": "cancel"})
        async with asyncio.timeout(10):
            while (frame := await ws.receive_json_from(timeout=5))["type"] != "error":
                pass
        assert frame["status"] == 499 and frame["model"] == "ws-slow"
        assert frame["ttft_ms"] == first["ttft_ms"] > 0
        [record] = await await_usage(lambda evs: len(evs) == 1)
        assert record["status_code"] == 499
        assert frame["usage"]["completion_tokens"] == record["completion_tokens"] >= 10
        assert frame["usage"]["prompt_tokens"] == record["prompt_tokens"]
        assert Decimal(str(frame["cost"])) == Decimal(record["cost"]) > 0
    finally:
        await ws.disconnect()


async def test_the_live_time_to_first_token_is_the_final_one(alice):
    ws = await session_socket(alice)
    try:
        await ws.send_json_to(
            {"type": "chat", "models": ["ws-thinker"], "messages": [{"role": "user", "content": "?"}]}
        )
        frames = []
        async with asyncio.timeout(10):
            while (frame := await ws.receive_json_from(timeout=5))["type"] != "complete":
                frames.append(frame)
        output = [f for f in frames if f["type"] in ("reasoning", "chunk")]
        [done] = [f for f in frames if f["type"] == "done"]
        assert output[0]["type"] == "reasoning" and output[0]["ttft_ms"] == done["ttft_ms"] >= 150
    finally:
        await ws.disconnect()


async def until_complete(ws, frames=None) -> list[dict]:
    frames = [] if frames is None else frames
    async with asyncio.timeout(15):
        while (frame := await ws.receive_json_from(timeout=10))["type"] != "complete":
            frames.append(frame)
    frames.append(frame)
    return frames


async def test_regenerate_replaces_one_models_answer_in_the_saved_turn(alice, fresh_simulator):
    from accounts.models import PlaygroundRun

    messages = [{"role": "user", "content": "once more"}]
    ws = await session_socket(alice)
    try:
        await ws.send_json_to({"type": "chat", "models": ["ws-thinker", "ws-slow"], "messages": messages,
                               "max_tokens": 8})  # fmt: skip
        frames = await until_complete(ws)
        run_id = next(f["run_id"] for f in frames if f["type"] == "saved")
        first = await sync_to_async(lambda: PlaygroundRun.objects.get(pk=run_id).turns)()
        ids = {name: answer["done"]["request_id"] for name, answer in first[0]["answers"].items()}

        # Refused: not a boolean, no run, more than one model; nothing runs.
        for frame, complaint in (
            ({"regenerate": "yes", "run_id": run_id, "models": ["ws-slow"]}, "'regenerate' must be a boolean"),
            ({"regenerate": True, "models": ["ws-slow"]}, "needs the 'run_id'"),
            ({"regenerate": True, "run_id": run_id, "models": ["ws-slow", "ws-thinker"]}, "exactly one model"),
        ):
            await ws.send_json_to({"type": "chat", "messages": messages, "max_tokens": 8, **frame})
            refused = await ws.receive_json_from(timeout=5)
            assert refused["type"] == "error" and refused["status"] == 400 and complaint in refused["message"], refused
        assert len(fresh_simulator.requests(model="sim-echo?tokens=200&interval_ms=20")) == 1

        await ws.send_json_to({"type": "chat", "regenerate": True, "run_id": run_id, "models": ["ws-slow"],
                               "messages": messages, "max_tokens": 8})  # fmt: skip
        frames = await until_complete(ws)
        assert next(f for f in frames if f["type"] == "saved") == {"type": "saved", "run_id": run_id, "turn": 0}
        [done] = [f for f in frames if f["type"] == "done"]
        assert done["model"] == "ws-slow" and done["request_id"] != ids["ws-slow"]
    finally:
        await ws.disconnect()
    turns = await sync_to_async(lambda: PlaygroundRun.objects.get(pk=run_id).turns)()
    assert len(turns) == 1
    answers = turns[0]["answers"]
    assert answers["ws-slow"]["status"] == "done" and answers["ws-slow"]["done"]["request_id"] == done["request_id"]
    assert answers["ws-thinker"]["done"]["request_id"] == ids["ws-thinker"]
    assert len(fresh_simulator.requests(model="sim-echo?tokens=200&interval_ms=20")) == 2
