"""Programs on the websockets (/ws/playground/ and /v1/responses) that send no Origin header, against a gateway
process (uvicorn) over loopback: without a key they are told, in the socket's own error frame and with close
4401, to send one, as a bad key is; they are never authenticated by a session cookie they carry, and a browser
page of another site is still refused at the handshake."""

import orjson
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from accounts.models import Tier
from accounts.services import api_key_issue
from aigateway.config_watch import config_watch
from tests.support.data import model_create, provider_create
from tests.support.usage import usage_events

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 10.0
EVIL = "http://evil.example"


@pytest.fixture
def session_cookie(fresh_simulator) -> str:
    """A logged-in user's session cookie; the user holds a key, so a session socket could run a chat."""
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("wp-fast", [(sim, "sim-echo?tokens=3", 0)])
    user = get_user_model().objects.create_user("wp-alice", password="pw-wp-alice-1234")
    api_key_issue(owner=user, tier=Tier.objects.create(name="wp-tier"), name="alice-key")
    config_watch.invalidate()
    browser = Client()
    browser.force_login(user)
    return f"sessionid={browser.cookies['sessionid'].value}"


def until_closed(url: str, headers: dict) -> tuple[list[dict], int | None]:
    """The frames a socket gets, and its close code; raises InvalidStatus when the handshake is refused."""
    frames = []
    with ws_connect(url, additional_headers=headers, open_timeout=10) as ws:
        try:
            while True:
                frames.append(orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)))
        except ConnectionClosed as closed:
            return frames, closed.rcvd.code if closed.rcvd else None


@pytest.mark.parametrize("cookie", [False, True], ids=["no-cookie", "with-the-session-cookie"])
def test_a_playground_socket_without_key_or_origin_is_told_to_send_a_key(gateway, session_cookie, cookie):
    headers = {"Cookie": session_cookie} if cookie else {}
    frames, code = until_closed(gateway.url.replace("http://", "ws://") + "/ws/playground/", headers)
    assert code == 4401, frames
    [error] = frames  # never `ready`: the session is not used without one of our Origins
    assert (error["type"], error["status"], error["code"]) == ("error", 401, "unauthenticated")
    assert "'Authorization: Bearer <key>'" in error["message"] and "'x-api-key'" in error["message"]
    assert usage_events() == []


def test_a_responses_socket_without_key_or_origin_is_told_to_send_a_key(gateway, session_cookie):
    frames, code = until_closed(gateway.url.replace("http://", "ws://") + "/v1/responses", {"Cookie": session_cookie})
    assert code == 4401, frames
    [error] = frames
    assert (error["type"], error["status"], error["error"]["code"]) == ("error", 401, "missing_api_key")


def test_a_page_of_another_site_is_still_refused_and_our_own_page_still_works(gateway, session_cookie):
    url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    for origin in (EVIL, "null"):
        with pytest.raises(InvalidStatus) as refused:
            until_closed(url, {"Cookie": session_cookie, "Origin": origin})
        assert refused.value.response.status_code == 403, origin
    with ws_connect(url, additional_headers={"Cookie": session_cookie, "Origin": gateway.url}) as ws:
        assert orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)) == {"type": "ready", "auth": "session"}
