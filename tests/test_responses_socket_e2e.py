"""The Responses API over a websocket (`ws /v1/responses`) end to end: the official openai SDK's
`client.responses.connect()` (and a raw websocket client where the SDK will not send what is tested) against a
gateway process (uvicorn) over loopback, with real Redis and the upstream simulator.

- Each response.create streams the events POST /v1/responses streams, on a Responses deployment (passed
  through) and on OpenAI- and Anthropic-dialect ones (translated), text and a function call alike; each
  response is one usage record.
- Lanes (`stream_id`): lanes run side by side, a lane's frames one after another; every event carries its lane.
- A bad frame gets an error event in OpenAI's websocket shape and the socket goes on serving.
- A client that closes mid-stream stops the upstream at once and is recorded once, as 499.
- No key or a bad key: an error event, then close 4401; a key needs no Origin. Codex's beta header and its
  request body are taken; `previous_response_id` is refused naming the field.
"""

import socket
import struct
import time

import openai
import orjson
import pytest
from openai.types.responses.responses_server_event import ResponseWsError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from accounts.models import ApiKey
from accounts.services import api_key_set_enabled
from streaming.responses_socket import FRAMES_PENDING_MAX
from streaming.tokens import count_tokens
from tests.support.data import key_create, model_create, provider_create
from tests.support.fuzz import LogTail, assert_clean_log
from tests.support.response_cache import cache_keys_left
from tests.support.usage import leases_held, markers_held, usage_events, wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Tell me something about streams"
WEATHER = "What is the weather in Paris?"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}
FRAME_TIMEOUT = 10.0
# public model -> the path the simulator is asked on
PATHS = {"wsr-resp": "/v1/responses", "wsr-chat": "/v1/chat/completions", "wsr-claude": "/v1/messages"}
SLOW = "sim-echo?tokens=200&interval_ms=30"


@pytest.fixture
def key(fresh_simulator):
    responses = provider_create("sim-responses", fresh_simulator.openai_base, dialect="responses")
    chat = provider_create("sim-chat", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("wsr-resp", [(responses, "sim-echo", 0)])
    model_create("wsr-chat", [(chat, "sim-echo", 0)])
    model_create("wsr-claude", [(claude, "sim-claude", 0)])
    model_create("wsr-lane", [(responses, "sim-echo?tokens=20&interval_ms=40", 0)])
    model_create("wsr-slow-resp", [(responses, SLOW, 0)])
    model_create("wsr-slow-chat", [(chat, SLOW, 0)])
    model_create("wsr-drop-resp", [(responses, "sim-echo?drop_after=3", 0)])
    model_create("wsr-drop-chat", [(chat, "sim-echo?drop_after=3", 0)])
    model_create("wsr-failover", [(responses, "sim-echo?fail=500", 0), (chat, "sim-echo", 1)])
    return key_create("wsr-tier")


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)


def socket_url(gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/responses"


def until_done(connection, count: int = 1) -> list:
    """The events of the connection until `count` responses have ended (completed, failed or refused)."""
    events = []
    ended = 0
    while ended < count:
        event = connection.recv()
        events.append(event)
        ended += event.type in ("response.completed", "response.incomplete", "response.failed", "error")
    return events


def sse_events(gateway, key: str, **fields) -> list:
    """The same request's events over POST /v1/responses (stream=True)."""
    with client(gateway, key).responses.stream(**fields) as stream:
        return list(stream)


def shape(events) -> list[tuple]:
    """What must match between the two doors: each event's type and its text or arguments delta."""
    return [(event.type, getattr(event, "delta", None)) for event in events]


@pytest.mark.parametrize("model", list(PATHS))
def test_sdk_streams_text_and_a_function_call_as_the_http_door_does(gateway, key, fresh_simulator, model):
    with client(gateway, key).responses.connect() as connection:
        connection.response.create(model=model, input=PROMPT)
        text_events = until_done(connection)
        connection.response.create(model=model, input=WEATHER, tools=[WEATHER_TOOL])
        tool_events = until_done(connection)

    assert text_events[0].type == "response.created" and text_events[-1].type == "response.completed"
    final = text_events[-1].response
    deltas = [event.delta for event in text_events if event.type == "response.output_text.delta"]
    assert len(deltas) == 12 and "".join(deltas) == final.output_text
    assert final.model == model and final.usage.output_tokens == 12
    assert [event.sequence_number for event in text_events] == list(range(len(text_events)))
    assert all(event.stream_id is None for event in text_events)
    arguments = [event.delta for event in tool_events if event.type == "response.function_call_arguments.delta"]
    assert "".join(arguments) == '{"location": "Paris"}'
    [call] = tool_events[-1].response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id

    # Each relayed as a streamed request on the deployment's own API.
    sent = fresh_simulator.requests(path=PATHS[model])
    assert len(sent) == 2 and all(record["stream"] for record in sent)
    if model == "wsr-resp":
        assert sent[0]["body"] == {"model": "sim-echo", "input": PROMPT, "stream": True}
    # One usage record per response, each with its own request id, as the HTTP door books them.
    events = wait_usage(lambda events: len(events) == 2)
    assert len({event["request_id"] for event in events}) == 2
    for event in events:
        assert (event["endpoint"], event["model"], event["status_code"], event["stream"]) == (
            "responses",
            model,
            200,
            True,
        )
        assert not event["tokens_estimated"] and event["prompt_tokens"] > 0
    assert sorted(event["completion_tokens"] for event in events)[-1] == 12

    # Exactly what the HTTP door streams for the same requests.
    assert shape(text_events) == shape(sse_events(gateway, key, model=model, input=PROMPT))
    assert shape(tool_events) == shape(sse_events(gateway, key, model=model, input=WEATHER, tools=[WEATHER_TOOL]))


def test_lanes_run_side_by_side_and_each_lane_in_order(gateway, key, fresh_simulator):
    with client(gateway, key).responses.connect() as connection:
        connection.response.create(model="wsr-lane", input="first on a", stream_id="a")
        connection.response.create(model="wsr-lane", input="only on b", stream_id="b")
        connection.response.create(model="wsr-lane", input="second on a", stream_id="a")
        events = until_done(connection, 3)

    assert {event.stream_id for event in events} == {"a", "b"}, "every event names its lane"
    lane_a = [event for event in events if event.stream_id == "a"]
    lane_b = [event for event in events if event.stream_id == "b"]
    # Lane a: its two responses one after the other, whole.
    types_a = [event.type for event in lane_a]
    assert types_a.count("response.created") == 2 and types_a.count("response.completed") == 2
    first_end = types_a.index("response.completed")
    assert types_a.index("response.created", 1) == first_end + 1
    first, second = lane_a[first_end].response, lane_a[-1].response
    assert first.id != second.id and len(first.output_text.split()) == len(second.output_text.split()) == 20
    # Lane b ran beside lane a's first response, not after it.
    position = {id(event): index for index, event in enumerate(events)}
    b_first_delta = next(event for event in lane_b if event.type == "response.output_text.delta")
    assert position[id(b_first_delta)] < position[id(lane_a[first_end])]
    # The simulator was asked for b while a's first ran, for a's second only once a's first had sent its
    # last token (its 20 tokens take at least 19 x 40 ms after its first event).
    # (Lanes run side by side, so b may even reach the simulator before a's first: found by input, not order.)
    asked = {record["body"]["input"]: record for record in fresh_simulator.requests(path="/v1/responses")}
    a1, b, a2 = asked["first on a"], asked["only on b"], asked["second on a"]
    assert b["started_at"] < a1["finished_at"]
    assert a2["started_at"] >= a1["first_byte_at"] + 0.76
    events = wait_usage(lambda events: len(events) == 3)
    assert {(event["status_code"], event["completion_tokens"]) for event in events} == {(200, 20)}


def test_bad_frames_get_error_events_and_the_socket_goes_on(gateway, key, fresh_simulator):
    tail = LogTail(gateway)
    cases = [
        ("{not json", None, 400, None, "not valid JSON"),
        ("[1, 2]", None, 400, None, "must be a JSON object"),
        ('{"model": "wsr-resp", "input": "hi"}', None, 400, "type", "no 'type'"),
        ('{"type": "response.cancel"}', None, 400, "type", "unknown frame type 'response.cancel'"),
        ('{"type": "response.create", "model": "wsr-resp"}', None, 400, "input", "'input' is required"),
        ('{"type": "response.create", "model": "wsr-resp", "input": "hi", "stream": false}', None, 400, "stream",
         "leave it out"),
        ('{"type": "response.create", "model": "wsr-resp", "input": "hi", "stream_id": 7}', None, 400, "stream_id",
         "'stream_id' must be"),
        ('{"type": "response.create", "model": "nope", "input": "hi", "stream_id": "x"}', "x", 404, "model",
         "'nope' does not exist"),
        ('{"type": "response.create", "model": "wsr-resp", "input": "hi", "previous_response_id": "resp_1"}', None,
         400, "previous_response_id", "stores no responses"),
    ]  # fmt: skip
    with client(gateway, key).responses.connect() as connection:
        for raw, stream_id, status, param, words in cases:
            connection.send_raw(raw)
            event = connection.recv()
            assert isinstance(event, ResponseWsError), (raw, event)
            assert (event.status, event.error.param, event.stream_id) == (status, param, stream_id), (raw, event)
            assert words in event.error.message, (raw, event.error.message)
            assert event.error.type == "invalid_request_error" and event.error.code
        connection._connection.send(b"\x00\x01")  # a binary frame
        assert "binary" in connection.recv().error.message
        # Still open, and a good frame is answered.
        connection.response.create(model="wsr-resp", input=PROMPT)
        events = until_done(connection)
    assert events[-1].type == "response.completed" and len(events[-1].response.output_text.split()) == 12
    assert len(fresh_simulator.requests()) == 1, "no bad frame went upstream"
    events = wait_usage(lambda events: len(events) == 1)
    assert events[0]["status_code"] == 200, "a bad body is no usage record"
    assert_clean_log(tail.new())


@pytest.mark.parametrize("model", ["wsr-slow-resp", "wsr-slow-chat"])
def test_closing_the_socket_mid_stream_stops_the_upstream_and_records_once(gateway, key, fresh_simulator, model):
    tail = LogTail(gateway)
    connection = client(gateway, key).responses.connect().enter()
    connection.response.create(model=model, input=PROMPT, stream_id="lane")
    seen = []
    while len(seen) < 5:
        event = connection.recv()
        if event.type == "response.output_text.delta":
            seen.append(event.delta)
    closed_at = time.time()
    connection.close()

    [record] = fresh_simulator.wait_for_requests(lambda records: records and records[0]["disconnected"], timeout=5)
    assert record["disconnected_at"] - closed_at < 2.0, "the upstream closed with the socket"
    assert record["tokens_sent"] < 100  # of 200, at 30 ms each: it stopped early
    [event] = wait_usage(lambda events: len(events) == 1, timeout=5)
    assert (event["status_code"], event["error_type"], event["endpoint"]) == (499, "client_disconnected", "responses")
    # The tokens seen so far, counted by the gateway (the provider reports usage only at the end).
    assert event["tokens_estimated"] and count_tokens("".join(seen)) <= event["completion_tokens"] < 100
    eventually(lambda: leases_held() == 0 and markers_held() == 0, timeout=5, what="lease and marker cleared")
    time.sleep(1.0)
    assert len(usage_events()) == 1, "recorded exactly once"
    assert_clean_log(tail.new())


@pytest.mark.parametrize("model", ["wsr-drop-resp", "wsr-drop-chat"])
def test_an_upstream_failing_mid_stream_is_an_error_event_and_the_socket_goes_on(gateway, key, model):
    with client(gateway, key).responses.connect() as connection:
        connection.response.create(model=model, input=PROMPT, stream_id="s")
        events = until_done(connection)
        connection.response.create(model="wsr-failover", input=PROMPT, stream_id="s")
        after = until_done(connection)
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    error = events[-1]
    assert len(deltas) == 3 and isinstance(error, ResponseWsError), events[-3:]
    assert (error.status, error.error.code, error.error.type, error.stream_id) == (
        502,
        "upstream_stream_error",
        "server_error",
        "s",
    )
    assert "mid-stream" in error.error.message and error.sequence_number is not None
    # The next response on the socket fails over from a deployment answering 500 to the next one.
    assert after[-1].type == "response.completed" and len(after[-1].response.output_text.split()) == 12
    events = wait_usage(lambda events: len(events) == 2)
    assert [(e["status_code"], e["error_type"], e["attempts"]) for e in events] == [
        (502, "upstream_stream_error", 1),
        (200, "", 2),
    ]


def test_limits_hold_per_response_and_a_refusal_names_its_lane(gateway, fresh_simulator, key):
    """A key with one concurrency slot: a second lane's response is refused with the HTTP door's 429 (its
    rate-limit headers in the error event) and booked as a refusal; the first streams on."""
    limited = key_create("wsr-one-slot", max_concurrent=1)
    with client(gateway, limited).responses.connect() as connection:
        connection.response.create(model="wsr-lane", input=PROMPT, stream_id="a")
        while connection.recv().type != "response.output_text.delta":
            pass
        connection.response.create(model="wsr-lane", input=PROMPT, stream_id="b")
        events = until_done(connection, 2)
    [refused] = [event for event in events if event.type == "error"]
    assert (refused.status, refused.error.code, refused.stream_id) == (429, "rate_limit_exceeded", "b")
    assert refused.error.headers["x-request-id"].startswith("req_") and "retry-after" in refused.error.headers
    assert events[-1].type == "response.completed" and events[-1].stream_id == "a"
    usage = wait_usage(lambda events: len(events) == 2)
    by_status = {event["status_code"]: event for event in usage}
    assert by_status[429]["error_type"] == "rate_limit_exceeded" and by_status[429]["endpoint"] == "responses"
    assert by_status[429]["request_id"] == refused.error.headers["x-request-id"]
    assert by_status[200]["completion_tokens"] == 20
    assert len(fresh_simulator.requests()) == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer"}, "missing_api_key"),
        ({"Authorization": "Bearer sk-gw-" + "z" * 40}, "invalid_api_key"),
        ({"x-api-key": "sk-gw-" + "z" * 40, "Origin": "http://evil.example"}, "invalid_api_key"),
    ],
)
def test_no_key_or_a_bad_key_gets_an_error_event_then_4401(gateway, key, fresh_simulator, headers, code):
    with ws_connect(socket_url(gateway), additional_headers=headers, open_timeout=10) as ws:
        error = orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=FRAME_TIMEOUT)
    assert closed.value.rcvd.code == 4401
    assert error["type"] == "error" and error["status"] == 401, error
    assert error["error"]["code"] == code and error["error"]["type"] == "invalid_request_error"
    assert "zzzz" not in error["error"]["message"]
    assert fresh_simulator.requests() == [] and usage_events() == []


def test_the_sdk_sees_a_bad_key_as_an_error_event(gateway, key):
    with client(gateway, "sk-gw-" + "q" * 40).responses.connect() as connection:
        event = connection.recv()
        assert isinstance(event, ResponseWsError) and event.status == 401
        assert event.error.code == "invalid_api_key"


def test_codex_beta_header_and_body_pass_through_and_a_later_turn_continues(gateway, key, fresh_simulator):
    """What Codex sends over the socket: its beta header, and frames carrying its Responses body (as captured
    from Codex over HTTP, texts shortened). A later turn names the socket's previous response and sends only its
    new input: the provider gets the whole conversation. An id the socket never answered is refused."""
    body = {
        "model": "wsr-resp",
        "stream": True,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello"}]},
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Runs a command", "strict": False,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "00000000-0000-7000-8000-000000000000",
        "client_metadata": {"turn_id": "00000000-0000-7000-8000-000000000002"},
    }  # fmt: skip
    headers = {
        "Authorization": f"Bearer {key}",
        "OpenAI-Beta": "responses_websockets=2026-02-06",
        "originator": "codex_exec",
        "session-id": "00000000-0000-7000-8000-000000000000",
    }
    with ws_connect(socket_url(gateway), additional_headers=headers, open_timeout=10) as ws:
        ws.send(orjson.dumps({"type": "response.create", **body}).decode())
        events = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)))
        first = events[-1]["response"]
        turn = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And again"}]}
        follow_up = {**body, "previous_response_id": first["id"], "input": [turn]}
        ws.send(orjson.dumps({"type": "response.create", **follow_up}).decode())
        events = []
        while not events or events[-1]["type"] != "response.completed":
            events.append(orjson.loads(ws.recv(timeout=FRAME_TIMEOUT)))
        ws.send(orjson.dumps({"type": "response.create", **follow_up, "previous_response_id": "resp_other"}).decode())
        refused = orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))
    assert first["model"] == "wsr-resp" and events[-1]["response"]["id"] != first["id"]
    sent, continued = fresh_simulator.requests(path="/v1/responses")
    assert sent["body"] == {**body, "model": "sim-echo"}, "passed through as sent, only the model rewritten"
    # The first turn's input and output, then the new turn, with no previous_response_id for the provider.
    assert continued["body"]["input"] == [*body["input"], *first["output"], turn]
    assert "previous_response_id" not in continued["body"]
    assert refused["type"] == "error" and refused["status"] == 400
    assert refused["error"]["param"] == "previous_response_id"
    assert "previous_response_id" in refused["error"]["message"] and "full input" in refused["error"]["message"]


def test_a_bad_frame_is_answered_in_its_lanes_order(gateway, key):
    """A client reading its default lane's response to the end finds a later bad frame's error after it, not
    inside it; a frame naming another lane is answered at once."""
    with client(gateway, key).responses.connect() as connection:
        connection.response.create(model="wsr-lane", input=PROMPT)
        connection.send_raw("{not json")
        connection.send_raw('{"type": "response.cancel", "stream_id": "other"}')
        events = until_done(connection, 3)
    types = [(event.type, event.stream_id) for event in events]
    assert types.index(("error", "other")) < types.index(("response.completed", None)) < types.index(("error", None))
    assert types[-1] == ("error", None)


def test_a_socket_holds_a_bounded_number_of_frames(gateway, key, fresh_simulator):
    """Frames wait in their lane behind a response that streams; past FRAMES_PENDING_MAX a frame is refused at
    once. Frames still waiting when the socket closes never run, and cost nothing."""
    with client(gateway, key).responses.connect() as connection:
        for _ in range(FRAMES_PENDING_MAX + 1):
            connection.response.create(model="wsr-slow-resp", input=PROMPT)
        events = [connection.recv()]
        # The refusal comes at once, whatever the first response has streamed meanwhile.
        while not any(event.type == "error" for event in events) or events[-1].type != "response.output_text.delta":
            events.append(connection.recv())
    [refused] = [event for event in events if event.type == "error"]
    assert isinstance(refused, ResponseWsError) and refused.status == 429, refused
    assert refused.error.code == "too_many_pending_frames"
    assert [event.type for event in events].count("response.output_text.delta") < 100
    fresh_simulator.wait_for_requests(lambda records: records and records[0]["disconnected"], timeout=5)
    [event] = wait_usage(lambda events: len(events) == 1, timeout=5)
    assert event["status_code"] == 499
    time.sleep(0.5)
    assert len(fresh_simulator.requests()) == 1 and len(usage_events()) == 1


def test_a_repeated_response_is_answered_from_the_cache(gateway, fresh_simulator, key):
    cached = key_create("wsr-cached", cache_ttl_seconds=300)
    with client(gateway, cached).responses.connect() as connection:
        connection.response.create(model="wsr-chat", input=PROMPT)
        first = until_done(connection)
        eventually(lambda: len(usage_events()) == 1 and cache_keys_left(), timeout=5, what="the answer cached")
        connection.response.create(model="wsr-chat", input=PROMPT)
        second = until_done(connection)
    assert second[-1].type == "response.completed"
    assert second[-1].response.output_text == first[-1].response.output_text
    assert len(fresh_simulator.requests()) == 1, "the second answer came from the cache"
    events = wait_usage(lambda events: len(events) == 2)
    assert [event.get("cache_hit", False) for event in events] == [False, True]


def test_a_key_disabled_while_the_socket_is_open_ends_it(gateway, fresh_simulator, key):
    plaintext = key_create("wsr-disabled")
    with ws_connect(socket_url(gateway), additional_headers={"x-api-key": plaintext}, open_timeout=10) as ws:
        ws.send(orjson.dumps({"type": "response.create", "model": "wsr-resp", "input": PROMPT}).decode())
        while orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))["type"] != "response.completed":
            pass
        api_key_set_enabled(api_key=ApiKey.objects.get(tier__name="wsr-disabled"), enabled=False)
        frame = {"type": "response.create", "model": "wsr-resp", "input": PROMPT, "stream_id": "s"}
        ws.send(orjson.dumps(frame).decode())
        error = orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=FRAME_TIMEOUT)
    assert (error["status"], error["error"]["code"], error["stream_id"]) == (401, "invalid_api_key", "s")
    assert closed.value.rcvd.code == 4401
    assert len(fresh_simulator.requests()) == 1


def test_sockets_reset_mid_stream_stop_their_lanes_and_leave_a_clean_log(gateway, key, fresh_simulator):
    """Clients that vanish (TCP reset, not a close) with two lanes streaming: every response stops upstream and
    is recorded as 499, and no failed send is logged as a traceback."""
    tail = LogTail(gateway)
    sockets = 6
    for _ in range(sockets):
        ws = ws_connect(socket_url(gateway), additional_headers={"Authorization": f"Bearer {key}"}, compression=None)
        for lane in ("a", "b"):
            ws.send(orjson.dumps({"type": "response.create", "model": "wsr-slow-chat", "input": PROMPT,
                                  "stream_id": lane}).decode())  # fmt: skip
        lanes_streaming = set()
        while lanes_streaming != {"a", "b"}:
            event = orjson.loads(ws.recv(timeout=FRAME_TIMEOUT))
            if event["type"] == "response.output_text.delta":
                lanes_streaming.add(event["stream_id"])
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close_socket()
    events = wait_usage(lambda events: len(events) == 2 * sockets, timeout=15)
    assert {event["status_code"] for event in events} == {499}
    fresh_simulator.wait_for_requests(lambda records: all(r["disconnected"] for r in records), timeout=5)
    time.sleep(1.0)
    log = tail.new()
    assert "never retrieved" not in log and "ClientDisconnected" not in log, log[-5000:]
    assert_clean_log(log)


@pytest.mark.parametrize("model", ["wsr-chat", "wsr-claude"])
def test_a_warm_up_then_a_turn_continuing_it_through_a_translation(gateway, key, fresh_simulator, model):
    """`generate: false` (Codex's warm-up) is answered at once with an empty response that calls no provider and
    records nothing; a turn naming it with previous_response_id reaches the provider with the whole conversation,
    and so does the next turn naming that one (the SDK's own previous-response use)."""
    fresh_simulator.configure(tool="get_weather", tool_args={"location": "Paris"})
    system = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]}
    with client(gateway, key).responses.connect() as connection:
        connection.response.create(model=model, input=[system], tools=[WEATHER_TOOL], generate=False)
        [*_, warm] = until_done(connection)
        assert warm.type == "response.completed" and warm.response.output == [], warm
        assert warm.response.usage.input_tokens == 0 and warm.response.usage.output_tokens == 0
        connection.response.create(
            model=model, input=WEATHER, tools=[WEATHER_TOOL], previous_response_id=warm.response.id
        )
        [*_, called] = until_done(connection)
        [call] = called.response.output
        assert call.type == "function_call" and call.name == "get_weather"
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}
        connection.response.create(
            model=model, input=[output], tools=[WEATHER_TOOL], previous_response_id=called.response.id
        )
        [*_, answered] = until_done(connection)
    assert answered.type == "response.completed" and answered.response.output_text
    first, second = fresh_simulator.requests(path=PATHS[model])
    text = orjson.dumps(second["body"]).decode()
    # The second provider request holds the developer text, the question, the call and its output.
    assert "Be brief." in text and WEATHER in text and "get_weather" in text and "Sunny" in text
    assert "Be brief." in orjson.dumps(first["body"]).decode()
    events = wait_usage(lambda events: len(events) == 2)
    assert [event["status_code"] for event in events] == [200, 200]


def test_only_this_sockets_responses_can_be_continued(gateway, key, fresh_simulator):
    with client(gateway, key).responses.connect() as connection:
        connection.response.create(model="wsr-chat", input=PROMPT)
        [*_, done] = until_done(connection)
    with client(gateway, key).responses.connect() as other:
        other.response.create(model="wsr-chat", input="more", previous_response_id=done.response.id)
        [refused] = until_done(other)
    assert isinstance(refused, ResponseWsError) and refused.status == 400
    assert refused.error.param == "previous_response_id" and "same socket" in refused.error.message
    assert len(fresh_simulator.requests(path=PATHS["wsr-chat"])) == 1
