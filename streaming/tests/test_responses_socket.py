"""The Responses websocket's event shaping (pure functions): error events in OpenAI's websocket shape, which
the SDK parses as ResponseWsError, and the lane's `stream_id` added to an event sent as it came."""

import orjson
import pytest
from openai._models import construct_type_unchecked
from openai.types.responses.responses_server_event import ResponsesServerEvent, ResponseWsError

from aigateway.errors import GatewayError, bad_request
from streaming.responses_socket import error_event, stream_error_event, with_stream_id

MEMBER = '"stream_id":"lane-1"'


def sdk_event(event: dict):
    """The event as the openai SDK's websocket connection parses a frame (`parse_event`)."""
    return construct_type_unchecked(value=orjson.loads(orjson.dumps(event)), type_=ResponsesServerEvent)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"type":"response.output_text.delta","delta":" lorem"}',
         {"type": "response.output_text.delta", "delta": " lorem", "stream_id": "lane-1"}),
        ('{"type":"x"}  ', {"type": "x", "stream_id": "lane-1"}),
        ("{ }", {"stream_id": "lane-1"}),
        ('{"type":"x","text":"a } b"}', {"type": "x", "text": "a } b", "stream_id": "lane-1"}),
    ],
)  # fmt: skip
def test_the_lane_is_added_to_an_event_as_it_came(data, expected):
    assert orjson.loads(with_stream_id(data, MEMBER)) == expected


def test_an_error_reads_as_the_sdks_websocket_error():
    error = bad_request("'input' is required", param="input")
    event = error_event(error, "lane-1", request_id="req_1")
    assert event == {
        "type": "error",
        "status": 400,
        "error": {
            "message": "'input' is required",
            "type": "invalid_request_error",
            "param": "input",
            "code": "invalid_request",
            "headers": {"x-request-id": "req_1"},
        },
        "stream_id": "lane-1",
    }
    parsed = sdk_event(event)
    assert isinstance(parsed, ResponseWsError) and parsed.error.param == "input" and parsed.stream_id == "lane-1"


def test_a_refusal_carries_the_http_doors_headers_and_no_lane_when_none_was_named():
    error = GatewayError(429, "rate_limit_exceeded", "slow down", headers={"retry-after": "3"})
    event = error_event(error, None, request_id="req_2")
    assert "stream_id" not in event
    assert event["error"]["type"] == "rate_limit_exceeded"
    assert event["error"]["headers"] == {"retry-after": "3", "x-request-id": "req_2"}


@pytest.mark.parametrize(
    "data",
    [
        # The SSE stream's error event (flat), as the gateway and OpenAI's HTTP stream send it.
        '{"type":"error","code":"upstream_stream_error","message":"cut short","param":null,"sequence_number":7}',
        # An upstream that nests it already.
        '{"type":"error","error":{"code":"upstream_stream_error","message":"cut short"},"sequence_number":7}',
    ],
)
def test_a_mid_stream_error_is_nested_as_the_websocket_sends_it(data):
    event = stream_error_event(data, 502, "lane-1")
    assert event["status"] == 502 and event["sequence_number"] == 7 and event["stream_id"] == "lane-1"
    assert event["error"] == {
        "message": "cut short",
        "type": "server_error",
        "param": None,
        "code": "upstream_stream_error",
    }
    assert isinstance(sdk_event(event), ResponseWsError)


def test_a_mid_stream_error_that_is_not_json_still_reads_as_an_error():
    event = stream_error_event("not json", 502, None)
    assert event["error"]["code"] == "upstream_stream_error" and event["error"]["message"]
    assert "stream_id" not in event and "sequence_number" not in event
