"""A client's body in the canonical model: every dialect's parse_request either reads it or refuses it
with a 400 naming the field, and every translation of what it read can be built and encoded. No wrong
type anywhere in a body may surface as a TypeError, AttributeError or KeyError (a 500)."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigateway.errors import GatewayError
from providers.dialects import DIALECTS
from providers.dialects.anthropic import anthropic
from providers.dialects.canonical import ChatRequest, ToolCall
from providers.dialects.nesting import JSON_DEPTH_MAX, json_text_too_deep, too_deep_field
from providers.dialects.openai import openai
from providers.dialects.responses import responses
from tests.support.fuzz import chat_bodies, fuzz_settings, json_values, messages_bodies, responses_bodies, texts

MODELS = st.sampled_from(["m"])
BODIES = {
    "openai": chat_bodies(MODELS),
    "anthropic": messages_bodies(MODELS),
    "responses": responses_bodies(MODELS),
}


def _read_or_refuse(dialect, body) -> ChatRequest | None:
    try:
        request = dialect.parse_request(body)
    except GatewayError as error:
        assert error.status == 400, error.message
        assert error.message and error.param, (error.message, error.param)
        return None
    assert isinstance(request, ChatRequest)
    return request


def _build_everywhere(request: ChatRequest) -> None:
    """Every provider dialect can build (and encode) the request, or refuses it with a 400; the text the
    gateway counts tokens of (when a provider reports none) is text."""
    for tool in request.tools:
        assert isinstance(tool.name, str) and isinstance(tool.description, str | None), tool
        assert isinstance(tool.parameters, dict), tool
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, ToolCall):
                assert isinstance(part.name, str) and isinstance(part.arguments, str), part
    for provider in DIALECTS.values():
        for stream in (False, True):
            try:
                built = provider.build_request(request, upstream_model="up", stream=stream, max_output_tokens=64)
            except GatewayError as error:
                assert error.status == 400, error.message
                continue
            orjson.dumps(built)


@pytest.mark.parametrize("name", list(BODIES))
def test_spoiled_bodies_are_read_or_refused(name):
    @fuzz_settings()
    @given(body=BODIES[name])
    def check(body):
        request = _read_or_refuse(DIALECTS[name], body)
        if request is not None:
            _build_everywhere(request)

    check()


@pytest.mark.parametrize("name", list(BODIES))
def test_any_object_is_read_or_refused(name):
    @fuzz_settings()
    @given(body=st.dictionaries(st.one_of(st.sampled_from(["messages", "input", "tools", "stop"]), texts), json_values))
    def check(body):
        request = _read_or_refuse(DIALECTS[name], body)
        if request is not None:
            _build_everywhere(request)

    check()


USER = [{"role": "user", "content": "hi"}]


def _refused(dialect, body: dict) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        dialect.parse_request(body)
    assert raised.value.status == 400
    return raised.value


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": 5}, "stop"),
        ({"stop": [1, "x"]}, "stop"),
        ({"tools": 5}, "tools"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"functions": 5}, "functions"),
        ({"functions": [{"name": "f", "parameters": 5}]}, "functions[0].parameters"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
            "tools[0].function.description",
        ),
        ({"messages": [*USER, {"role": "assistant", "tool_calls": 5}]}, "messages[1].tool_calls"),
        ({"messages": [*USER, {"role": "assistant", "tool_calls": [5]}]}, "messages[1].tool_calls[0]"),
        (
            {"messages": [*USER, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [*USER, {"role": "tool", "tool_call_id": [], "content": "x"}]}, "messages[1].tool_call_id"),
        ({"messages": 5}, "messages"),
        ({"messages": [5]}, "messages[0]"),
    ],
)
def test_openai_wrong_types_name_the_field(fields, param):
    error = _refused(openai, {"model": "m", "messages": USER, **fields})
    assert error.param == param
    assert param.split(".")[-1].split("[")[0] in error.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": 5}, "tools"),
        ({"tools": [{"name": "t", "input_schema": 5}]}, "tools[0].input_schema"),
        ({"tools": [{"name": "t", "input_schema": {}, "description": 5}]}, "tools[0].description"),
        ({"stop_sequences": 5}, "stop_sequences"),
        ({"stop_sequences": [None]}, "stop_sequences"),
        ({"tool_choice": {"type": []}}, "tool_choice.type"),
        ({"tool_choice": {"type": {"a": 1}}}, "tool_choice.type"),
        ({"tool_choice": "auto"}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]},
            "messages[0].content[0].content",
        ),
        ({"messages": {"role": "user"}}, "messages"),
        # The budget raised max_tokens past what a 64-bit integer holds: the built request could not be encoded.
        ({"thinking": {"type": "enabled", "budget_tokens": 2**64 - 1}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": "1024"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": True}}, "thinking.budget_tokens"),
    ],
)
def test_anthropic_wrong_types_name_the_field(fields, param):
    error = _refused(anthropic, {"model": "m", "max_tokens": 5, "messages": USER, **fields})
    assert error.param == param


def test_anthropic_adaptive_effort_of_any_type_is_read():
    body = {"model": "m", "max_tokens": 5, "messages": USER, "thinking": {"type": "adaptive"}}
    assert anthropic.parse_request({**body, "output_config": {"effort": ["high"]}}).reasoning_effort == "medium"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": 5}, "tools"),
        ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools[0].parameters"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": 5}]}, "input[0].arguments"),
        ({"input": 5}, "input"),
    ],
)
def test_responses_wrong_types_name_the_field(fields, param):
    error = _refused(responses, {"model": "m", "input": "hi", **fields})
    assert error.param == param


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [JSON_DEPTH_MAX + 1, 254, 1000])
def test_tool_arguments_nested_too_deep_are_refused(depth):
    call = {"function": {"name": "f", "arguments": _nested(depth)}}
    error = _refused(openai, {"model": "m", "messages": [*USER, {"role": "assistant", "tool_calls": [call]}]})
    assert error.param == "messages[1].tool_calls[0].function.arguments"
    item = {"type": "function_call", "name": "f", "arguments": _nested(depth)}
    assert _refused(responses, {"model": "m", "input": [item]}).param == "input[0].arguments"


def test_tool_arguments_within_the_limit_translate():
    call = {"function": {"name": "f", "arguments": '{"a":' + _nested(JSON_DEPTH_MAX - 10) + "}"}}
    request = openai.parse_request({"model": "m", "messages": [*USER, {"role": "assistant", "tool_calls": [call]}]})
    orjson.dumps(anthropic.build_request(request, upstream_model="up", stream=False, max_output_tokens=None))


def test_nesting_names_the_top_level_field():
    body = {"model": "m", "deep": {"a": [[[1]]]}, "flat": [1, 2]}
    assert too_deep_field(body, limit=4) == "deep"
    assert too_deep_field(body, limit=5) is None
    assert json_text_too_deep(_nested(5), limit=4)
    assert not json_text_too_deep(_nested(4), limit=4)
    assert not json_text_too_deep("[" * 300, limit=4)  # not JSON: another rule's business
