"""Answers kept in the canonical model (providers.dialects.replay): what decides a fingerprint and what does
not, an answer read back exactly as it was written, and a complete reply replayed as a stream and back."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.dialects.anthropic import anthropic
from providers.dialects.canonical import (
    ChatResponse,
    Finish,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from providers.dialects.openai import openai
from providers.dialects.replay import (
    Answer,
    AnswerUnreadable,
    answer_decode,
    answer_encode,
    answer_events,
    request_fingerprint,
)
from providers.dialects.responses import responses

CHAT = {
    "model": "m",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
    "max_tokens": 50,
    "temperature": 0.5,
}


def _chat_fingerprint(body: dict, model: str = "m") -> str:
    return request_fingerprint(openai.parse_request(body), model=model, body=body)


def test_the_same_conversation_in_each_format_has_one_fingerprint():
    messages = {
        "model": "m",
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        "max_tokens": 50,
        "temperature": 0.5,
    }
    response = {
        "model": "m",
        "instructions": "be brief",
        "input": "hi there",
        "max_output_tokens": 50,
        "temperature": 0.5,
    }
    prints = {
        _chat_fingerprint(CHAT),
        request_fingerprint(anthropic.parse_request(messages), model="m", body=messages),
        request_fingerprint(responses.parse_request(response), model="m", body=response),
    }
    assert len(prints) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "someone"},
        {"metadata": {"run": "7"}},
        {"store": False},
    ],
)
def test_what_does_not_change_an_answer_does_not_change_the_fingerprint(change):
    assert _chat_fingerprint({**CHAT, **change}) == _chat_fingerprint(CHAT)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.6},
        {"max_tokens": 51},
        {"top_p": 0.9},
        {"stop": ["."]},
        {"seed": 3},
        {"frequency_penalty": 0.1},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "hi there"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there!"}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"reasoning_effort": "high"},
    ],
)
def test_what_changes_an_answer_changes_the_fingerprint(change):
    assert _chat_fingerprint({**CHAT, **change}) != _chat_fingerprint(CHAT)


def test_the_serving_model_is_part_of_the_fingerprint():
    assert _chat_fingerprint(CHAT, model="a") != _chat_fingerprint(CHAT, model="b")


def test_key_order_of_tool_schemas_does_not_matter():
    one = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    two = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}
    tool = lambda schema: [{"type": "function", "function": {"name": "f", "parameters": schema}}]  # noqa: E731
    assert _chat_fingerprint({**CHAT, "tools": tool(one)}) == _chat_fingerprint({**CHAT, "tools": tool(two)})


_text = st.text(max_size=20)
_events = st.lists(
    st.one_of(
        st.builds(TextDelta, _text),
        st.builds(ThinkingDelta, _text, st.none() | _text),
        st.builds(ToolCallDelta, st.integers(0, 3), st.none() | _text, st.none() | _text, _text),
    ),
    max_size=30,
).map(lambda events: [*events, Finish("stop")])
_counts = st.integers(0, 10**8)


@given(_events, st.builds(Usage, _counts, _counts, _counts, _counts, _counts), st.booleans())
def test_an_answer_reads_back_as_it_was_written(events, usage, estimated):
    answer = answer_decode(answer_encode(Answer(events, usage, estimated)))
    assert answer == Answer(events, usage, estimated)


@pytest.mark.parametrize(
    "data", [b"", b"not json", b'{"events": [["x", 1]], "usage": [0,0,0,0,0], "estimated": false}', b"[]"]
)
def test_bytes_that_are_no_answer_are_refused_by_name(data):
    with pytest.raises(AnswerUnreadable):
        answer_decode(data)


def test_a_complete_reply_replays_as_word_chunks_and_reads_back_whole():
    reply = ChatResponse(
        id="chatcmpl-1",
        parts=[
            Thinking("let me think", signature="sig"),
            Text("Red, orange and yellow."),
            ToolCall("call_1", "lookup", '{"q": "rainbow"}'),
            ToolCall("call_2", "other", "{}"),
        ],
        finish_reason="tool_calls",
        usage=Usage(10, 20),
    )
    events = answer_events(reply)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Red, ", "orange ", "and ", "yellow."]
    assert [e.index for e in events if isinstance(e, ToolCallDelta)] == [0, 1]
    assert events[-1] == Finish("tool_calls")
    whole = Answer(events, Usage(10, 20)).response()
    assert whole.parts == reply.parts and whole.finish_reason == "tool_calls" and whole.usage == Usage(10, 20)
    assert whole.id == ""  # each rendering makes its own


def test_a_replayed_stream_opens_with_the_usage():
    answer = Answer([TextDelta("a"), Finish("stop")], Usage(3, 1, 2, 0, 0), estimated=True)
    first, *rest = answer.stream_events()
    assert first == UsageReport(3, 1, 2, estimated=True, cache_write_tokens=0, reasoning_tokens=0)
    assert rest == answer.events


def test_streamed_fragments_of_one_tool_call_read_back_as_one_call():
    events = [
        ToolCallDelta(0, "call_1", "lookup", '{"q": '),
        ToolCallDelta(0, None, None, '"x"}'),
        TextDelta("done"),
        Finish("tool_calls"),
    ]
    reply = Answer(events, Usage()).response()
    assert reply.parts == [ToolCall("call_1", "lookup", '{"q": "x"}'), Text("done")]
