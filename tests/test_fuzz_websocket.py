"""Generated frames on the playground websocket (/ws/playground/): spoiled compare requests, JSON
nested past the encoder's limit, numbers no JSON number holds, broken text, binary frames, unknown
frame types and cancels with nothing to cancel. Each frame gets either a run (ending in `complete`)
or one error frame naming the problem with a 4xx status; the socket stays open and the log holds
no traceback.

Driven twice: in process through the real ASGI application (a session socket, which also reads
`key_id`), and over loopback against a gateway process (a socket with an API key), whose runs are
relayed to the simulator.
"""

import asyncio
import logging

import orjson
import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_connect

from aigateway.asgi import application
from aigateway.config_watch import config_watch
from providers.upstream import upstream_clients_close
from streaming.relay import background_drain
from tests.support.fuzz import (
    MODEL_NAMES,
    ErrorLog,
    LogTail,
    assert_clean_log,
    compare_bodies,
    fuzz_routes_create,
    fuzz_settings,
    json_values,
    raw_body,
    raw_mutations,
)

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1:8000")
FRAME_TIMEOUT = 20.0


@st.composite
def frames(draw) -> str | bytes:
    """One frame as sent: mostly a spoiled chat request, encoded and then perhaps spoiled as text."""
    kind = draw(st.sampled_from(["chat", "chat", "chat", "chat", "json", "cancel", "binary"]))
    if kind == "json":
        return orjson.dumps(draw(json_values)).decode()
    if kind == "cancel":
        return orjson.dumps(draw(st.sampled_from([{"type": "cancel"}, {"type": None}, {"type": ["chat"]}]))).decode()
    if kind == "binary":
        return draw(st.binary(max_size=64))
    raw = raw_body(draw(compare_bodies(MODEL_NAMES, frame=True)), draw(raw_mutations))
    return raw.decode("utf-8", errors="replace")


def check_frames(received: list[dict]) -> None:
    """The frames one sent frame produced: each an event of the compare stream, errors with a 4xx
    status and a message (a model's own failure may be an upstream 5xx, never the gateway's)."""
    for frame in received:
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        if frame["type"] == "error":
            assert isinstance(frame["message"], str) and frame["message"].strip(), frame
            assert len(frame["message"]) <= 1000, frame
            if "model" in frame:
                assert frame["status"] < 500 or frame["status"] in (502, 503, 504), frame
                assert frame["code"] != "internal_error", frame
            else:
                assert 400 <= frame["status"] < 500, frame


def is_last(frame: dict) -> bool:
    """A run-level refusal (no model), or the end of a run."""
    return frame["type"] == "complete" or (frame["type"] == "error" and "model" not in frame)


@pytest.fixture
def alice(simulator):
    user = get_user_model().objects.create_user("fz-alice", password="pw-fz-alice-1234")
    fuzz_routes_create(simulator, user=user)
    config_watch.invalidate()
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _until_last(communicator: WebsocketCommunicator) -> list[dict]:
    received = []
    async with asyncio.timeout(FRAME_TIMEOUT):
        while True:
            frame = await communicator.receive_json_from(timeout=FRAME_TIMEOUT)
            received.append(frame)
            if is_last(frame):
                return received


def test_garbage_frames_in_process(alice):
    log = ErrorLog()
    logging.getLogger().addHandler(log)
    with asyncio.Runner() as runner:
        communicator = WebsocketCommunicator(application, "/ws/playground/", headers=[(b"cookie", alice), ORIGIN])
        connected, _ = runner.run(communicator.connect(timeout=5))
        assert connected
        assert runner.run(communicator.receive_json_from(timeout=5)) == {"type": "ready", "auth": "session"}

        @fuzz_settings()
        @given(frame=frames())
        def check(frame):
            log.clear()
            # As the server delivers it, empty frames included (send_to refuses those).
            key = "bytes" if isinstance(frame, bytes) else "text"
            runner.run(communicator.send_input({"type": "websocket.receive", key: frame}))
            check_frames(runner.run(_until_last(communicator)))
            log.check()

        try:
            check()
        finally:
            runner.run(communicator.disconnect())
            runner.run(background_drain())
            runner.run(upstream_clients_close())
            logging.getLogger().removeHandler(log)


@pytest.fixture
def api_key(simulator):
    key = fuzz_routes_create(simulator)
    config_watch.invalidate()
    return key


def test_garbage_frames_over_a_gateway(api_key, gateway):
    tail = LogTail(gateway)
    url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}, open_timeout=10,
                    max_size=None) as socket:  # fmt: skip
        assert orjson.loads(socket.recv(timeout=10)) == {"type": "ready", "auth": "key"}

        @fuzz_settings()
        @given(frame=frames())
        def check(frame):
            socket.send(frame)
            received = []
            while not received or not is_last(received[-1]):
                received.append(orjson.loads(socket.recv(timeout=FRAME_TIMEOUT)))
            check_frames(received)
            assert_clean_log(tail.new())

        check()


@pytest.mark.parametrize("depth", [254, 600, 1023])
async def test_a_frame_nested_past_the_encoder_limit_is_refused(alice, depth):
    """The frame is read (orjson reads 1,024 levels) but could never be sent upstream (254)."""
    communicator = WebsocketCommunicator(application, "/ws/playground/", headers=[(b"cookie", alice), ORIGIN])
    assert (await communicator.connect(timeout=5))[0]
    try:
        await communicator.receive_json_from(timeout=5)
        frame = {"type": "chat", "models": ["fz-oa"], "messages": [{"role": "user", "content": "hi"}]}
        text = orjson.dumps(frame).decode()[:-1] + ',"metadata":' + "[" * depth + "]" * depth + "}"
        await communicator.send_to(text_data=text)
        error = await communicator.receive_json_from(timeout=10)
        assert error["type"] == "error" and error["status"] == 400, error
        assert "'metadata' nests JSON more than 200 levels deep" in error["message"]
        # The socket stays open and runs the next frame.
        await communicator.send_json_to(frame)
        assert (await _until_last(communicator))[-1]["type"] == "complete"
    finally:
        await communicator.disconnect()
        await background_drain()
        await upstream_clients_close()
