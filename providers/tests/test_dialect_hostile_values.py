"""Property: whatever JSON value a provider puts in a reply's or an event's usage, error, choices or content
members, a dialect's parsers raise nothing but MalformedEvent (MalformedValue naming the member), and
what they return has the gateway's types: counts are integers from 0 to TOKEN_COUNT_MAX, messages and
texts are strings. The canonical events they return render in every client dialect without an error."""

import copy

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.dialects import DIALECTS
from providers.dialects.canonical import (
    TOKEN_COUNT_MAX,
    ChatResponse,
    Finish,
    MalformedEvent,
    Start,
    StreamError,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what orjson reads and writes
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOOL_CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
OPENAI_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 4,
    "prompt_tokens_details": {"cached_tokens": 2},
    "completion_tokens_details": {"reasoning_tokens": 1},
}
OPENAI_REPLY = {
    "id": "chatcmpl-1",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "tool_calls": [TOOL_CALL]},
            "finish_reason": "stop",
        }
    ],
    "usage": OPENAI_USAGE,
}
OPENAI_CHUNK = {
    "id": "chatcmpl-1",
    "choices": [{"index": 0, "delta": {"content": "hi", "tool_calls": [TOOL_CALL]}, "finish_reason": "stop"}],
    "usage": OPENAI_USAGE,
}
ANTHROPIC_USAGE = {
    "input_tokens": 10,
    "cache_read_input_tokens": 2,
    "cache_creation_input_tokens": 1,
    "output_tokens": 4,
}
ANTHROPIC_REPLY = {
    "id": "msg_1",
    "content": [
        {"type": "text", "text": "hi"},
        {"type": "thinking", "thinking": "hm", "signature": "s"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": ANTHROPIC_USAGE,
}
ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {"id": "msg_1", "usage": ANTHROPIC_USAGE}},
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
    },
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "signature_delta", "signature": "s"}},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 4},
    },
    {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
]
RESPONSES_USAGE = {"input_tokens": 10, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 2}}
RESPONSES_REPLY = {
    "id": "resp_1",
    "status": "completed",
    "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
        {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    ],
    "usage": RESPONSES_USAGE,
}
RESPONSES_EVENTS = [
    {"type": "response.created", "response": {"id": "resp_1"}},
    {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {"type": "function_call", "call_id": "c", "name": "f"},
    },
    {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{}"},
    {"type": "response.output_text.delta", "delta": "hi"},
    {"type": "response.completed", "response": {**RESPONSES_REPLY, "incomplete_details": None}},
    {"type": "response.incomplete", "response": {"status": "incomplete", "incomplete_details": {"reason": "x"}}},
    {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}},
    {"type": "error", "code": "server_error", "message": "boom"},
]
REPLIES = {"openai": OPENAI_REPLY, "anthropic": ANTHROPIC_REPLY, "responses": RESPONSES_REPLY}
OPENAI_EVENTS = [OPENAI_CHUNK, {"error": {"message": "busy", "type": "server_error"}}]
EVENTS = {"openai": OPENAI_EVENTS, "anthropic": ANTHROPIC_EVENTS, "responses": RESPONSES_EVENTS}


def _paths(value, prefix=()):
    """Every member path of a JSON value (into objects and arrays), the root excluded."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _replaced(value, path, new):
    out = copy.deepcopy(value)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return out


def _hostile(base):
    """`base` with one member (at any depth) replaced by a random JSON value."""
    paths = list(_paths(base))
    return st.tuples(st.sampled_from(paths), JSON).map(lambda pair: _replaced(base, *pair))


def _count_ok(value) -> bool:
    return value is None or (type(value) is int and 0 <= value <= TOKEN_COUNT_MAX)


def _usage_ok(usage) -> bool:
    if usage is None:
        return True
    fields = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
    return all(_count_ok(getattr(usage, name)) for name in fields)


def _part_ok(part) -> bool:
    match part:
        case Text(text=text):
            return isinstance(text, str)
        case Thinking(text=text, signature=signature):
            return isinstance(text, str) and (signature is None or isinstance(signature, str))
        case ToolCall(id=call_id, name=name, arguments=arguments):
            return all(isinstance(value, str) for value in (call_id, name, arguments))
    return False


def _event_ok(event) -> bool:
    match event:
        case Start(id=event_id):
            return isinstance(event_id, str)
        case TextDelta(text=text):
            return isinstance(text, str)
        case ThinkingDelta(text=text, signature=signature):
            return isinstance(text, str) and (signature is None or isinstance(signature, str))
        case ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments):
            return (
                type(index) is int
                and all(value is None or isinstance(value, str) for value in (call_id, name))
                and isinstance(arguments, str)
            )
        case UsageReport():
            return _usage_ok(event)
        case Finish(reason=reason, stop_sequence=stop):
            return isinstance(reason, str) and (stop is None or isinstance(stop, str))
        case StreamError(message=message, kind=kind):
            return isinstance(message, str) and (kind is None or isinstance(kind, str))
    return True  # End


def _renders_everywhere(events) -> None:
    for client in DIALECTS.values():
        renderer = client.stream_renderer(model="m", include_usage=True, prompt_estimate=3)
        for event in events:
            for chunk in renderer.render(event):
                assert isinstance(chunk, bytes)
        renderer.close()


@pytest.mark.parametrize("name", list(REPLIES))
@PROPERTY
@given(data=st.data())
def test_a_reply_with_any_value_anywhere_parses_to_gateway_types_or_is_malformed(name, data):
    dialect = DIALECTS[name]
    reply = data.draw(_hostile(REPLIES[name]))
    try:
        usage = dialect.response_usage(reply)
        text = dialect.response_text(reply)
        parsed = dialect.parse_response(reply)
    except MalformedEvent:
        return
    assert usage is None or isinstance(usage, Usage)
    assert _usage_ok(usage) and isinstance(text, str)
    assert isinstance(parsed, ChatResponse) and isinstance(parsed.id, str)
    assert parsed.finish_reason is None or isinstance(parsed.finish_reason, str)
    assert all(_part_ok(part) for part in parsed.parts) and _usage_ok(parsed.usage)
    for client in DIALECTS.values():
        orjson.dumps(client.render_response(parsed, model="m"))


@pytest.mark.parametrize("name", list(EVENTS))
@PROPERTY
@given(data=st.data())
def test_a_stream_event_with_any_value_anywhere_parses_to_gateway_types_or_is_malformed(name, data):
    dialect = DIALECTS[name]
    parser = dialect.stream_parser()
    produced = []
    for base in EVENTS[name]:
        event = data.draw(st.one_of(st.just(base), _hostile(base)))
        try:
            _payload, events = parser.feed(
                event.get("type") if isinstance(event, dict) else None, orjson.dumps(event).decode()
            )
        except MalformedEvent:
            continue
        assert all(_event_ok(canonical) for canonical in events), events
        produced.extend(events)
    _renders_everywhere(produced)


@pytest.mark.parametrize("name", list(DIALECTS))
@PROPERTY
@given(
    payload=JSON
    | st.fixed_dictionaries({"error": JSON})
    | st.fixed_dictionaries({"error": st.fixed_dictionaries({"message": JSON})})
)
def test_an_error_body_of_any_shape_gives_a_message_or_none(name, payload):
    message = DIALECTS[name].upstream_error_message(payload)
    assert message is None or (isinstance(message, str) and message)


@pytest.mark.parametrize(
    "name, reply",
    [
        ("openai", {"usage": {"prompt_tokens": 10**12, "completion_tokens": 5}}),
        ("anthropic", {"usage": {"input_tokens": 5, "output_tokens": 10**12}}),
        ("responses", {"usage": {"input_tokens": 10**15, "output_tokens": 5}}),
    ],
)
def test_a_count_above_the_maximum_is_clamped_and_flagged(name, reply):
    usage = DIALECTS[name].response_usage(reply)
    assert TOKEN_COUNT_MAX in (usage.prompt_tokens, usage.completion_tokens)
    assert usage.clamped


@pytest.mark.parametrize(
    "name, reply, member",
    [
        ("openai", {"usage": {"prompt_tokens": "many"}}, "usage.prompt_tokens is a string"),
        ("openai", {"usage": {"completion_tokens": -1}}, "usage.completion_tokens is negative"),
        ("openai", {"usage": "lots"}, "usage is a string, not an object"),
        ("anthropic", {"usage": {"output_tokens": True}}, "usage.output_tokens is a boolean"),
        ("responses", {"usage": {"input_tokens": 1.5}}, "usage.input_tokens is a number, not a token count"),
    ],
)
def test_a_bad_count_is_malformed_naming_the_member(name, reply, member):
    with pytest.raises(MalformedEvent, match=member):
        DIALECTS[name].response_usage(reply)
