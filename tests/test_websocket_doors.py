"""The playground websocket (/ws/playground/) as another site, a logged-out browser and a hostile client
would use it, over loopback against gateway processes (uvicorn), with real Redis and the simulator.

- Another site's page cannot drive a logged-in browser's socket: only a valid API key lifts the Origin
  check, a key header holding no valid key is refused (close 4401), and neither ever falls back to the
  session.
- Logging out ends the browser's open sockets (close 4401), on every gateway process; a socket whose
  session has expired or been deleted runs no further chat.
- A frame above GATEWAY_MAX_BODY_BYTES gets a 413 error frame and the socket stays open.
- A text frame that is not UTF-8, and sockets dropped mid-run, leave no traceback in the gateway's log.
"""

import base64
import re
import socket
import struct
import time
from datetime import timedelta

import httpx
import orjson
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect as ws_connect

from accounts.models import Tier
from accounts.services import api_key_issue
from aigateway.config_watch import config_watch
from providers.models import Model, RouteRule
from tests.support.data import model_create, provider_create
from tests.support.fuzz import LogTail, assert_clean_log
from tests.support.usage import usage_events, wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-doors-alice-1234"
EVIL = "http://evil.example"
MESSAGES = [{"role": "user", "content": "hello over a websocket"}]
FRAME_TIMEOUT = 10.0


@pytest.fixture
def routes(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("wd-fast", [(sim, "sim-echo?tokens=6&interval_ms=20", 0)])
    model_create("wd-slow", [(sim, "sim-echo?tokens=80&interval_ms=50", 0)])
    model_create("wd-burst", [(sim, "sim-echo?tokens=400&interval_ms=1", 0)])
    alice = get_user_model().objects.create_user("wd-alice", password=PASSWORD)
    tier = Tier.objects.create(name="wd-tier", max_compare_models=3)
    alice_key = api_key_issue(owner=alice, tier=tier, name="alice-key")
    program_key = api_key_issue(owner=get_user_model().objects.create_user("wd-program"), tier=tier, name="program")
    config_watch.invalidate()
    return {"alice": alice, "alice_key": alice_key.api_key, "program": program_key}


def ws_url(gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/ws/playground/"


def browser_login(gateway) -> httpx.Client:
    """A browser's cookie jar logged in as alice through the login form."""
    client = httpx.Client(base_url=gateway.url, timeout=10)
    page = client.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    answer = client.post("/login/", data={"username": "wd-alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert answer.status_code == 302, answer.text
    return client


def cookie(browser: httpx.Client) -> str:
    return f"sessionid={browser.cookies['sessionid']}"


def chat(model: str, **extra) -> str:
    return orjson.dumps({"type": "chat", "models": [model], "messages": MESSAGES, **extra}).decode()


def frames_until_complete(ws) -> list[dict]:
    frames = []
    while not frames or frames[-1]["type"] != "complete":
        frames.append(orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)))
    return frames


def frames_until_closed(ws) -> tuple[list[dict], int]:
    """Every frame the server sends, and the close code it ends with."""
    frames = []
    try:
        while True:
            frames.append(orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


def socket_outcome(gateway, headers: dict) -> tuple:
    """("refused", status) when the handshake is refused, else ("closed", frames, code) once the server closes
    the socket; a socket that says `ready` is asked to run a chat first (the attack's payload)."""
    try:
        ws = ws_connect(ws_url(gateway), additional_headers=headers, open_timeout=10)
    except InvalidStatus as refused:
        return ("refused", refused.response.status_code)
    with ws:
        first = orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))
        if first["type"] == "ready":
            ws.send(chat("wd-fast"))
            return ("ready", first, frames_until_complete(ws))
        frames, code = frames_until_closed(ws)
        return ("closed", [first, *frames], code)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# Each: extra headers beside the session cookie, and what the gateway must answer. A header that carries
# our keys (Bearer, x-api-key) is a key, even empty; another scheme is no key, so the Origin check holds.
FOREIGN_SOCKETS = {
    "basic-auth": ({"Origin": EVIL, "Authorization": basic("wd-alice", PASSWORD)}, "refused"),
    "token-scheme": ({"Origin": EVIL, "Authorization": "Token abc"}, "refused"),
    "empty-bearer": ({"Origin": EVIL, "Authorization": "Bearer"}, 4401),
    "bearer-blank": ({"Origin": EVIL, "Authorization": "Bearer  "}, 4401),
    "empty-x-api-key": ({"Origin": EVIL, "x-api-key": ""}, 4401),
    "bad-bearer": ({"Origin": EVIL, "Authorization": "Bearer sk-gw-" + "z" * 40}, 4401),
    "null-origin": ({"Origin": "null"}, "refused"),
    "null-origin-basic": ({"Origin": "null", "Authorization": basic("wd-alice", PASSWORD)}, "refused"),
    "null-origin-empty-x-api-key": ({"Origin": "null", "x-api-key": ""}, 4401),
    # No browser opens a websocket without Origin: a program, never authenticated by the cookie it carries.
    "no-origin": ({}, 4401),
}


def test_another_site_cannot_drive_a_logged_in_browser(routes, gateway, fresh_simulator):
    browser = browser_login(gateway)
    outcomes = {}
    for name, (headers, _) in FOREIGN_SOCKETS.items():
        outcomes[name] = socket_outcome(gateway, {"Cookie": cookie(browser), **headers})
    for name, (headers, expected) in FOREIGN_SOCKETS.items():
        outcome = outcomes[name]
        if expected == "refused":
            assert outcome == ("refused", 403), (name, outcome)
        else:
            assert outcome[0] == "closed" and outcome[2] == expected, (name, outcome)
            [error] = outcome[1]
            assert error["type"] == "error" and error["status"] == 401, name
            assert ("invalid" if headers else "send an API key") in error["message"], name
            assert "zzzz" not in error["message"]
    # Nothing ran and nobody paid.
    time.sleep(0.5)
    assert fresh_simulator.requests() == []
    assert usage_events() == []
    # The same browser from our own page still works, and pays with alice's key.
    own = socket_outcome(gateway, {"Cookie": cookie(browser), "Origin": gateway.url})
    assert own[0] == "ready" and own[1] == {"type": "ready", "auth": "session"}, own
    assert own[2][-1]["results"]["wd-fast"]["status"] == "done"
    [event] = wait_usage(lambda events: len(events) == 1)
    assert event["api_key_id"] == routes["alice_key"].id


def test_a_valid_key_needs_no_origin_and_ignores_the_session(routes, gateway):
    browser = browser_login(gateway)
    program = routes["program"]
    for headers in (
        {"Authorization": f"Bearer {program.plaintext}", "Origin": EVIL, "Cookie": cookie(browser)},
        {"x-api-key": program.plaintext, "Origin": "null"},
        {"x-api-key": program.plaintext},
    ):
        outcome = socket_outcome(gateway, headers)
        assert outcome[0] == "ready" and outcome[1] == {"type": "ready", "auth": "key"}, (headers.keys(), outcome)
        assert outcome[2][-1]["results"]["wd-fast"]["status"] == "done"
    events = wait_usage(lambda events: len(events) == 3)
    assert {event["api_key_id"] for event in events} == {program.api_key.id}


@pytest.fixture
def other_gateway(gateway_factory):
    return gateway_factory()


@pytest.mark.parametrize("logout", ["/logout/ on another gateway process", "/admin/logout/ on the same one"])
def test_logging_out_ends_the_playground_socket(routes, gateway, request, fresh_simulator, logout):
    if "admin" in logout:
        get_user_model().objects.filter(pk=routes["alice"].pk).update(is_staff=True)  # admin logs out only staff
    browser = browser_login(gateway)
    served_by = request.getfixturevalue("other_gateway") if "another" in logout else gateway
    with ws_connect(ws_url(gateway), additional_headers={"Cookie": cookie(browser), "Origin": gateway.url}) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)) == {"type": "ready", "auth": "session"}
        ws.send(chat("wd-slow"))
        chunks = 0
        while chunks < 3:
            chunks += orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "chunk"
        path = logout.split()[0]
        started = time.monotonic()
        answer = browser.post(served_by.url + path, headers={"X-CSRFToken": browser.cookies["csrftoken"]})
        assert answer.status_code in (200, 302), answer.text
        frames, code = frames_until_closed(ws)
        ended_after = time.monotonic() - started
    assert code == 4401, (code, frames)
    ended = [f for f in frames if f["type"] == "error" and "model" not in f]
    assert ended and ended[-1]["status"] == 401 and ended[-1]["code"] == "session_ended", frames
    assert ended_after < 3.0, ended_after  # the run had 3.8 s to go
    # The run stopped with the socket: the upstream was closed, the tokens seen so far recorded.
    [record] = fresh_simulator.wait_for_requests(lambda records: records and records[0]["disconnected"], timeout=5)
    assert record["tokens_sent"] < 60
    [event] = wait_usage(lambda events: len(events) == 1, timeout=5)
    assert event["status_code"] == 499 and event["api_key_id"] == routes["alice_key"].id


@pytest.mark.parametrize("ending", ["deleted", "expired"])
def test_a_chat_after_the_session_ended_is_refused(routes, gateway, fresh_simulator, ending):
    browser = browser_login(gateway)
    with ws_connect(ws_url(gateway), additional_headers={"Cookie": cookie(browser), "Origin": gateway.url}) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)) == {"type": "ready", "auth": "session"}
        ws.send(chat("wd-fast"))
        assert frames_until_complete(ws)[-1]["results"]["wd-fast"]["status"] == "done"
        sessions = Session.objects.filter(session_key=browser.cookies["sessionid"])
        if ending == "deleted":
            assert sessions.delete()[0] == 1
        else:
            assert sessions.update(expire_date=timezone.now() - timedelta(seconds=1)) == 1
        ws.send(chat("wd-fast"))
        frames, code = frames_until_closed(ws)
    assert code == 4401, (code, frames)
    [error] = frames
    assert error["type"] == "error" and error["status"] == 401 and error["code"] == "session_ended", error
    time.sleep(0.5)
    assert len(fresh_simulator.requests()) == 1  # only the chat before the session ended
    assert len(usage_events()) == 1


def test_routing_rules_read_the_sockets_headers(routes, gateway):
    """A header rule routes a websocket chat as it routes the same request over HTTP."""
    RouteRule.objects.create(
        name="background", when={"header": {"x-gateway-route": "background"}}, target=Model.objects.get(name="wd-slow")
    )
    config_watch.invalidate()
    key = routes["program"].plaintext
    for route, served in (("background", "wd-slow"), ("interactive", "wd-fast")):
        headers = {"Authorization": f"Bearer {key}", "X-Gateway-Route": route}
        with ws_connect(ws_url(gateway), additional_headers=headers) as ws:
            assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
            ws.send(chat("wd-fast", max_tokens=2))
            [done] = [frame for frame in frames_until_complete(ws) if frame["type"] == "done"]
        assert (done["model"], done["served_model"]) == ("wd-fast", served), (route, done)


def test_a_frame_above_the_body_cap_is_refused_and_the_socket_stays_open(routes, gateway, fresh_simulator):
    tail = LogTail(gateway)
    cap = settings.GATEWAY_MAX_BODY_BYTES
    key = routes["program"].plaintext
    with ws_connect(ws_url(gateway), additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        for size in (cap + 1, 10_000_000):
            big = chat("wd-fast")
            big = big[:-1] + ',"user":"' + "x" * (size - len(big) - 10) + '"}'
            big += " " * (size - len(big))
            assert len(big.encode()) == size
            ws.send(big)
            error = orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))
            assert error["type"] == "error" and "model" not in error, error
            assert error["status"] == 413 and error["code"] == "request_too_large", error
            assert f"{size} bytes exceeds the limit of {cap} bytes" in error["message"]
        # Multi-byte text counts in bytes, as it arrived.
        wide = chat("wd-fast", user="é" * (cap // 2))
        assert len(wide) <= cap < len(wide.encode())
        ws.send(wide)
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["status"] == 413
        # Still open, and a normal chat runs.
        ws.send(chat("wd-fast"))
        assert frames_until_complete(ws)[-1]["results"]["wd-fast"]["status"] == "done"
    assert len(fresh_simulator.requests()) == 1  # nothing above the cap went upstream
    assert_clean_log(tail.new())


def test_a_frame_above_the_servers_frame_limit_closes_the_socket(routes, gateway):
    """Beyond uvicorn's --ws-max-size (16 MiB) the server itself ends the socket: close 1009, no traceback."""
    tail = LogTail(gateway)
    key = routes["program"].plaintext
    with ws_connect(ws_url(gateway), additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        ws.send("x" * (16 * 1024 * 1024 + 1))
        frames, code = frames_until_closed(ws)
    assert (frames, code) == ([], 1009)
    assert_clean_log(tail.new())


def test_a_text_frame_that_is_not_utf8_closes_1007_without_a_traceback(routes, gateway):
    tail = LogTail(gateway)
    key = routes["program"].plaintext
    headers = {"Authorization": f"Bearer {key}"}
    with ws_connect(ws_url(gateway), additional_headers=headers, compression=None) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        # The client library refuses to send broken text, so the frame is written to the socket as is.
        broken = Frame(Opcode.TEXT, b'{"type": "chat", "models": ["\xff\xfe"]}')
        ws.socket.sendall(broken.serialize(mask=True))
        frames, code = frames_until_closed(ws)
    assert (frames, code) == ([], 1007)
    # The gateway still serves sockets.
    with ws_connect(ws_url(gateway), additional_headers=headers) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
    time.sleep(0.3)
    assert_clean_log(tail.new())


def test_sockets_dropped_mid_run_leave_a_clean_log(routes, gateway, fresh_simulator):
    """Clients that vanish (TCP reset) while a run streams to them, some right after frames the socket
    answers itself (a second chat while one runs): the sends that fail are neither left unretrieved nor
    logged as tracebacks, and every run goes on for a resume (the grace outlasts it), ends and is recorded."""
    tail = LogTail(gateway)
    key = routes["program"].plaintext
    sockets = 16
    for index in range(sockets):
        ws = ws_connect(ws_url(gateway), additional_headers={"Authorization": f"Bearer {key}"}, compression=None)
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] == "ready"
        ws.send(chat("wd-slow" if index % 2 else "wd-burst"))
        while orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] != "chunk":
            pass
        for _ in range(index % 4):
            ws.send(chat("wd-fast"))  # refused: a run is in progress
        # A reset, not a close.
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close_socket()
    events = wait_usage(lambda events: len(events) == sockets, timeout=15)
    assert all(event["status_code"] == 200 for event in events), events
    # A task whose exception nobody retrieved is reported when it is collected; give that a moment.
    time.sleep(1.0)
    log = tail.new()
    assert "never retrieved" not in log and "ClientDisconnected" not in log, log[-5000:]
    assert_clean_log(log)


def test_an_idle_socket_closes_when_its_session_expires(routes, gateway_factory, fresh_simulator):
    """A tab that sends nothing: its session expires (or is deleted) in the store, and the socket closes
    with 4401 within GATEWAY_PLAYGROUND_SESSION_CHECK_SECONDS (0.5 s here), without a chat to trigger it."""
    gateway = gateway_factory(GATEWAY_PLAYGROUND_SESSION_CHECK_SECONDS="0.5")
    browser = browser_login(gateway)
    with ws_connect(ws_url(gateway), additional_headers={"Cookie": cookie(browser), "Origin": gateway.url}) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)) == {"type": "ready", "auth": "session"}
        time.sleep(1.2)  # several checks pass while the session is valid: the socket stays open
        sessions = Session.objects.filter(session_key=browser.cookies["sessionid"])
        assert sessions.update(expire_date=timezone.now() - timedelta(seconds=1)) == 1
        expired_at = time.monotonic()
        frames, code = frames_until_closed(ws)
        closed_after = time.monotonic() - expired_at
    assert code == 4401, (code, frames)
    assert [(f["status"], f["code"]) for f in frames] == [(401, "session_ended")]
    assert closed_after < 3.0
