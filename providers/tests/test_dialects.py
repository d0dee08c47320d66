"""Dialect translations, both directions, through the canonical model: requests, replies and streams."""

import orjson
import pytest

from aigateway.errors import GatewayError
from providers.dialects import DIALECTS, dialect_get
from providers.dialects.anthropic import anthropic
from providers.dialects.canonical import (
    End,
    Finish,
    MalformedEvent,
    Start,
    StreamError,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageReport,
)
from providers.dialects.openai import openai
from providers.dialects.sse import SSEDecoder

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather at a place",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather at a place",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}


def events_of(chunks: list[bytes]) -> list[tuple[str | None, object]]:
    """Client body chunks -> (event name, parsed data) per SSE event."""
    decoder = SSEDecoder()
    out = []
    for chunk in chunks:
        for event in decoder.feed(chunk):
            out.append((event.event, event.data if event.data == "[DONE]" else orjson.loads(event.data)))
    return out


def anthropic_sse(*payloads: dict) -> list[tuple[str, str]]:
    return [(p["type"], orjson.dumps(p).decode()) for p in payloads]


def translate_stream(parser, renderer, events: list[tuple[str | None, str]]) -> list[bytes]:
    """What a client receives, one list item per body chunk, for a complete upstream stream."""
    chunks = []
    for name, data in events:
        _, canonical = parser.feed(name, data)
        for event in canonical:
            chunks.extend(renderer.render(event))
    chunks.extend(renderer.close())
    return chunks


def test_both_dialects_are_registered():
    assert dialect_get("openai") is openai and dialect_get("anthropic") is anthropic
    assert set(DIALECTS) >= {"openai", "anthropic"}
    assert anthropic.paths["chat"] == "/v1/messages" and openai.paths["chat"] == "/chat/completions"


# OpenAI client -> Anthropic provider: request ---------------------------------------------------


def test_openai_request_to_anthropic_full_conversation():
    body = {
        "model": "claude-public",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these pictures?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "25C"}]},
            {"role": "user", "content": "Thanks!"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "max_completion_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-7",
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 1,
        "n": 1,
        "presence_penalty": 0.5,
        "response_format": {"type": "text"},
        "logprobs": False,
    }
    out = anthropic.build_request(
        openai.parse_request(body), upstream_model="sim-claude", stream=True, max_output_tokens=None
    )
    assert out == {
        "model": "sim-claude",
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these pictures?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"location": "Rome"}},
                ],
            },
            # Both tool results and the next user turn merge into one user message, results first.
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "25C"},
                    {"type": "text", "text": "Thanks!"},
                ],
            },
        ],
        "max_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "user-7"},
        "stream": True,
    }


@pytest.mark.parametrize(
    ("fields", "cap", "expected"),
    [
        ({}, None, 4096),
        ({}, 700, 700),
        ({"max_tokens": 50}, None, 50),
        ({"max_tokens": 5000}, 700, 700),
        ({"max_completion_tokens": 60, "max_tokens": 10}, None, 60),
    ],
)
def test_anthropic_always_gets_max_tokens(fields, cap, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    out = anthropic.build_request(openai.parse_request(body), upstream_model="u", stream=False, max_output_tokens=cap)
    assert out["max_tokens"] == expected
    assert "stream" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
        (None, None),
    ],
)
def test_openai_tool_choice_maps_to_anthropic(choice, expected):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    out = anthropic.build_request(openai.parse_request(body), upstream_model="u", stream=False, max_output_tokens=None)
    assert out.get("tool_choice") == expected
    assert out["tools"] == [WEATHER_TOOL_ANTHROPIC]


def test_consecutive_same_role_messages_are_merged_and_empty_ones_dropped():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": "three"}]},
        ],
    }
    out = anthropic.build_request(openai.parse_request(body), upstream_model="u", stream=False, max_output_tokens=None)
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"},
                {"type": "text", "text": "three"},
            ],
        }
    ]
    assert "system" not in out


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "'input_audio' content part"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]},
            "base64 data URL",
        ),
        ({"role": "function", "name": "f", "content": "x"}, "'messages[0].role' is 'function'"),
    ],
)
def test_untranslatable_openai_input_is_a_400_naming_it(message, needle):
    with pytest.raises(GatewayError) as caught:
        openai.parse_request({"model": "m", "messages": [message]})
    assert caught.value.status == 400
    assert needle in caught.value.message


# Anthropic client -> OpenAI provider: request ---------------------------------------------------


def test_anthropic_request_to_openai_full_conversation():
    body = {
        "model": "gpt-public",
        "max_tokens": 900,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "tools": [WEATHER_TOOL_ANTHROPIC],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END", "STOP"],
        "temperature": 0.5,
        "top_k": 40,
        "metadata": {"user_id": "user-9"},
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 100},
    }
    out = openai.build_request(
        anthropic.parse_request(body), upstream_model="sim-echo", stream=True, max_output_tokens=500
    )
    assert out == {
        "model": "sim-echo",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_tokens": 500,
        "temperature": 0.5,
        "stop": ["END", "STOP"],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "user": "user-9",
        "reasoning_effort": "low",  # a 100-token thinking budget
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_anthropic_server_tools_are_noted_and_documents_cannot_go_to_openai():
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    server_tool = {"type": "web_search_20250305", "name": "web_search"}
    request = anthropic.parse_request({**base, "tools": [WEATHER_TOOL_ANTHROPIC, server_tool]})
    # Left for the relay to drop or refuse (the model's unsupported_tools), never translated.
    assert [tool.name for tool in request.tools] == ["get_weather"]
    assert request.builtin_tools == [("tools[1]", "web_search_20250305")]
    with pytest.raises(GatewayError, match="must be a tool with a name"):
        anthropic.parse_request({**base, "tools": [{"type": "custom"}]})
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    with pytest.raises(GatewayError, match=r"'messages\[0\].content\[0\]' is a 'document' content block"):
        anthropic.parse_request({**base, "messages": [{"role": "user", "content": [document]}]})


# Same dialect: pass-through preparation ---------------------------------------------------------


def test_anthropic_passthrough_rewrites_model_and_caps_max_tokens_only():
    body = {"model": "public", "max_tokens": 9000, "messages": [{"role": "user", "content": "hi"}], "top_k": 3}
    assert anthropic.prepare_chat(body, upstream_model="sim-claude", stream=True, max_output_tokens=100) == {
        **body,
        "model": "sim-claude",
        "max_tokens": 100,
    }
    assert anthropic.prepare_chat(body, upstream_model="x", stream=False, max_output_tokens=None)["max_tokens"] == 9000
    assert body["model"] == "public", "the client's body is not modified"


# Replies (non-stream) ---------------------------------------------------------------------------

ANTHROPIC_TOOL_REPLY = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "sim-claude",
    "content": [
        {"type": "thinking", "thinking": "Let me look.", "signature": "s"},
        {"type": "text", "text": "Checking the weather."},
        {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"location": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 5},
}


def test_anthropic_reply_to_chat_completion():
    out = openai.render_response(anthropic.parse_response(ANTHROPIC_TOOL_REPLY), model="public")
    assert out["object"] == "chat.completion" and out["model"] == "public" and out["id"] == "chatcmpl-1"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking the weather.",
                "refusal": None,
                "reasoning_content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_toolu_9",  # the provider's id carried whole
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    # Anthropic's input_tokens leaves out cache reads; OpenAI's prompt_tokens includes them.
    assert out["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 7,
        "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 5},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
def test_anthropic_stop_reasons_map_to_finish_reasons(stop_reason, finish_reason):
    reply = {**ANTHROPIC_TOOL_REPLY, "content": [{"type": "text", "text": "hi"}], "stop_reason": stop_reason}
    out = openai.render_response(anthropic.parse_response(reply), model="m")
    assert out["choices"][0]["finish_reason"] == finish_reason
    assert out["choices"][0]["message"]["content"] == "hi"
    assert "tool_calls" not in out["choices"][0]["message"]


def test_chat_completion_to_anthropic_message():
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "sim-echo",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_5",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }
    out = anthropic.render_response(openai.parse_response(completion), model="public")
    assert out == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "public",
        "content": [{"type": "tool_use", "id": "toolu_call_5", "name": "get_weather", "input": {"location": "Paris"}}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 5},
    }
    text = {
        **completion,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "length"}],
    }
    out = anthropic.render_response(openai.parse_response(text), model="public")
    assert out["content"] == [{"type": "text", "text": "Hi"}] and out["stop_reason"] == "max_tokens"


# Anthropic stream -> OpenAI chunks --------------------------------------------------------------


def anthropic_text_stream(*tokens: str, stop_reason: str = "end_turn") -> list[tuple[str, str]]:
    return anthropic_sse(
        {
            "type": "message_start",
            "message": {
                "id": "msg_7",
                "type": "message",
                "role": "assistant",
                "model": "sim-claude",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in tokens),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": len(tokens)},
        },
        {"type": "message_stop"},
    )


def test_anthropic_stream_parses_to_canonical_events():
    parser = anthropic.stream_parser()
    canonical = [event for name, data in anthropic_text_stream(" a", " b") for event in parser.feed(name, data)[1]]
    assert canonical == [
        Start("msg_7"),
        UsageReport(12, None, 0),
        TextDelta(" a"),
        TextDelta(" b"),
        Finish("stop"),
        UsageReport(12, 2, 0),
        End(),
    ]
    with pytest.raises(MalformedEvent):
        parser.feed("content_block_delta", "{not json")


@pytest.mark.parametrize("include_usage", [False, True])
def test_anthropic_text_stream_to_openai_chunks(include_usage):
    chunks = translate_stream(
        anthropic.stream_parser(),
        openai.stream_renderer(model="public", include_usage=include_usage),
        anthropic_text_stream(" lorem", " ipsum", " dolor"),
    )
    events = events_of(chunks)
    # One body chunk per client event: ping, content_block_start/stop and message_stop say nothing.
    assert len(chunks) == len(events)
    datas = [data for _, data in events]
    assert datas[-1] == "[DONE]"
    payloads = datas[:-1]
    assert {p["id"] for p in payloads} == {"chatcmpl-7"}
    assert {p["model"] for p in payloads} == {"public"}
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    choices = [p["choices"] for p in payloads]
    assert choices[0] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert [c[0]["delta"] for c in choices[1:4]] == [
        {"content": " lorem"},
        {"content": " ipsum"},
        {"content": " dolor"},
    ]
    assert choices[4] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    if include_usage:
        assert len(payloads) == 6
        assert payloads[5]["choices"] == []
        assert payloads[5]["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        assert all(p["usage"] is None for p in payloads[:5])
    else:
        assert len(payloads) == 5
        assert all("usage" not in p for p in payloads)


def test_anthropic_tool_use_stream_to_openai_tool_call_deltas():
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_t", "usage": {"input_tokens": 30, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"location": '},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}},
        {"type": "message_stop"},
    )
    parser = anthropic.stream_parser()
    canonical = [event for name, data in stream for event in parser.feed(name, data)[1]]
    assert [e for e in canonical if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "toolu_1", "get_weather", ""),
        ToolCallDelta(0, arguments=""),
        ToolCallDelta(0, arguments='{"location": '),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, "toolu_2", "get_time", ""),
        ToolCallDelta(1, arguments="{}"),
    ]
    chunks = translate_stream(anthropic.stream_parser(), openai.stream_renderer(model="m", include_usage=False), stream)
    deltas = [data["choices"][0] for _, data in events_of(chunks) if data != "[DONE]"]
    assert [d["delta"] for d in deltas] == [
        {"role": "assistant", "content": ""},
        {"content": "Let me check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"location": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_toolu_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert deltas[-1]["finish_reason"] == "tool_calls"


def test_anthropic_thinking_maps_to_reasoning_content():
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_r", "usage": {"input_tokens": 3, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Yes."}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
        {"type": "message_stop"},
    )
    parser = anthropic.stream_parser()
    thinking = [e for name, data in stream for e in parser.feed(name, data)[1] if isinstance(e, ThinkingDelta)]
    assert thinking == [ThinkingDelta("Hmm."), ThinkingDelta("", "abc")]
    chunks = translate_stream(anthropic.stream_parser(), openai.stream_renderer(model="m", include_usage=False), stream)
    deltas = [data["choices"][0]["delta"] for _, data in events_of(chunks) if data != "[DONE]"]
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": "Hmm."}, {"content": "Yes."}, {}]


def test_anthropic_error_event_becomes_openai_error_then_done():
    stream = anthropic_text_stream(" a")[:4] + anthropic_sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    parser, renderer = anthropic.stream_parser(), openai.stream_renderer(model="m", include_usage=True)
    chunks = []
    for name, data in stream:
        for event in parser.feed(name, data)[1]:
            chunks.extend(renderer.render(event))
    chunks.extend(renderer.close())
    datas = [data for _, data in events_of(chunks)]
    assert datas[-1] == "[DONE]"
    assert datas[-2]["error"]["code"] == "upstream_stream_error"
    assert "mid-stream: Overloaded" in datas[-2]["error"]["message"]
    assert datas[1]["choices"][0]["delta"] == {"content": " a"}
    assert len(datas) == 4, "nothing after the error: no finish chunk, no usage chunk, one [DONE]"


# OpenAI stream -> Anthropic events --------------------------------------------------------------


def openai_chunks(*deltas: dict, finish: str = "stop", usage: dict | None = None) -> list[tuple[None, str]]:
    head = {"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 1, "model": "sim-echo"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage:
        chunks.append({**head, "choices": [], "usage": usage})
    return [(None, orjson.dumps(c).decode()) for c in chunks] + [(None, "[DONE]")]


def test_openai_stream_parses_to_canonical_events():
    parser = openai.stream_parser()
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    canonical = [e for name, data in openai_chunks({"content": "x"}, usage=usage) for e in parser.feed(name, data)[1]]
    assert canonical == [Start("chatcmpl-3"), TextDelta("x"), Finish("stop"), UsageReport(9, 2, 0), End()]
    _, events = parser.feed(None, '{"error": {"message": "boom", "type": "server_error"}}')
    assert events == [StreamError("boom", "server_error")]


def test_openai_text_stream_to_anthropic_events():
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    stream = openai_chunks({"content": " hello"}, {"content": " world"}, usage=usage)
    chunks = translate_stream(
        openai.stream_parser(), anthropic.stream_renderer(model="public", include_usage=True), stream
    )
    events = events_of(chunks)
    assert len(chunks) == len(events)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["id"] == "msg_3" and start["model"] == "public" and start["role"] == "assistant"
    assert start["content"] == [] and start["usage"]["output_tokens"] == 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [data["delta"] for _, data in events[2:4]] == [
        {"type": "text_delta", "text": " hello"},
        {"type": "text_delta", "text": " world"},
    ]
    assert events[4][1] == {"type": "content_block_stop", "index": 0}
    assert events[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 2, "input_tokens": 9},
    }


def test_anthropic_stop_reason_and_usage_go_out_as_soon_as_the_usage_chunk_arrives():
    usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    *head, usage_chunk, done = openai_chunks({"content": "x"}, finish="length", usage=usage)
    parser, renderer = openai.stream_parser(), anthropic.stream_renderer(model="m", include_usage=True)
    for name, data in head:
        for event in parser.feed(name, data)[1]:
            renderer.render(event)
    on_usage = [chunk for event in parser.feed(*usage_chunk)[1] for chunk in renderer.render(event)]
    assert [data for _, data in events_of(on_usage)] == [
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 1, "input_tokens": 9},
        }
    ]
    on_done = [chunk for event in parser.feed(*done)[1] for chunk in renderer.render(event)] + renderer.close()
    assert events_of(on_done) == [("message_stop", {"type": "message_stop"})]


def test_openai_tool_call_stream_to_anthropic_tool_use_blocks():
    stream = openai_chunks(
        {"content": "Checking."},
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"location": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        },
        finish="tool_calls",
    )
    chunks = translate_stream(openai.stream_parser(), anthropic.stream_renderer(model="m", include_usage=True), stream)
    events = [data for _, data in events_of(chunks)]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[4]["content_block"] == {"type": "tool_use", "id": "toolu_call_1", "name": "get_weather", "input": {}}
    assert [e["delta"]["partial_json"] for e in events[5:7]] == ['{"location": ', '"Paris"}']
    assert events[8]["content_block"]["name"] == "get_time"
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_openai_stream_error_becomes_anthropic_error_event():
    parser, renderer = openai.stream_parser(), anthropic.stream_renderer(model="m", include_usage=True)
    chunks = []
    for name, data in openai_chunks({"content": "a"})[:2] + [(None, '{"error": {"message": "exploded"}}')]:
        for event in parser.feed(name, data)[1]:
            chunks.extend(renderer.render(event))
    chunks.extend(renderer.close())
    events = events_of(chunks)
    assert [name for name, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream failed mid-stream: exploded"},
    }


# Same dialect: stream pass-through --------------------------------------------------------------


def test_openai_passthrough_hides_the_usage_we_forced():
    passthrough = openai.stream_passthrough(model="public", include_usage=False)
    usage_only = {"id": "c", "model": "sim-echo", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    assert passthrough.forward(None, usage_only) is None
    content = {"id": "c", "model": "sim-echo", "choices": [{"index": 0, "delta": {"content": "x"}}], "usage": None}
    assert orjson.loads(passthrough.forward(None, content)[6:]) == {
        "id": "c",
        "model": "public",
        "choices": [{"index": 0, "delta": {"content": "x"}}],
    }
    assert passthrough.forward(None, None) is None
    assert passthrough.close() == [b"data: [DONE]\n\n"]
    wanted = openai.stream_passthrough(model="public", include_usage=True)
    assert orjson.loads(wanted.forward(None, dict(usage_only))[6:])["usage"] == usage_only["usage"]


def test_anthropic_passthrough_keeps_event_names_and_rewrites_model():
    passthrough = anthropic.stream_passthrough(model="public", include_usage=True)
    start = {"type": "message_start", "message": {"id": "m", "model": "sim-claude", "usage": {"input_tokens": 1}}}
    out = passthrough.forward("message_start", start)
    assert out.startswith(b"event: message_start\ndata: ")
    assert orjson.loads(out.split(b"data: ", 1)[1])["message"]["model"] == "public"
    assert passthrough.forward("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert passthrough.close() == []


def test_ids_follow_the_clients_dialect():
    from providers.dialects.canonical import id_in_style

    assert id_in_style("call_abc", "toolu_", "call_") == "toolu_abc"
    assert id_in_style("toolu_abc", "toolu_", "call_") == "toolu_abc"
    assert id_in_style("xyz", "call_", "toolu_") == "call_xyz"
    assert id_in_style(None, "msg_", "chatcmpl-").startswith("msg_")
    assert id_in_style("chatcmpl-9", "msg_", "chatcmpl-") == "msg_9"


def test_a_translated_openai_stream_opening_with_a_tool_call_has_null_content():
    stream = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3}}}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    parser, renderer = anthropic.stream_parser(), openai.stream_renderer(model="m", include_usage=False)
    chunks = []
    for name, payload in stream:
        _, events = parser.feed(name, orjson.dumps(payload).decode())
        for event in events:
            chunks.extend(renderer.render(event))
    first = orjson.loads(chunks[0].removeprefix(b"data: "))
    assert first["id"] == "chatcmpl-1"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": None}


def test_a_translated_anthropic_stream_announces_an_estimate_then_the_count():
    renderer = anthropic.stream_renderer(model="m", include_usage=False, prompt_estimate=42)
    out = renderer.render(TextDelta("hi")) + renderer.render(Finish("stop"))
    out += renderer.render(UsageReport(prompt_tokens=40, completion_tokens=1)) + renderer.close()
    events = [orjson.loads(chunk.split(b"data: ", 1)[1]) for chunk in out]
    assert events[0]["message"]["usage"]["input_tokens"] == 42
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["usage"]["input_tokens"] == 40 and delta["usage"]["output_tokens"] == 1


def test_a_long_user_id_becomes_a_stable_digest_for_openai():
    long_id = '{"device_id": "' + "d" * 80 + '", "session_id": "s"}'
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"user_id": long_id},
    }
    first = openai.build_request(
        anthropic.parse_request(body), upstream_model="u", stream=False, max_output_tokens=None
    )
    again = openai.build_request(
        anthropic.parse_request(body), upstream_model="u", stream=False, max_output_tokens=None
    )
    assert first["user"] == again["user"] and first["user"].startswith("u-") and len(first["user"]) <= 64
    short = {**body, "metadata": {"user_id": "alice"}}
    assert (
        openai.build_request(anthropic.parse_request(short), upstream_model="u", stream=False, max_output_tokens=None)[
            "user"
        ]
        == "alice"
    )
