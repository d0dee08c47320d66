"""Same-dialect streams: an upstream event goes on byte for byte (only its model member rewritten in place)
when nothing else in it changes, and re-encoded otherwise; either way the client gets the same JSON."""

import orjson
from hypothesis import given
from hypothesis import strategies as st

from providers.dialects.anthropic import AnthropicPassthrough
from providers.dialects.openai import OpenAIPassthrough
from providers.dialects.responses import ResponsesPassthrough
from providers.dialects.sse import data_model_replaced, data_null_member_removed, model_member


def data_of(frame: bytes) -> bytes:
    assert frame.endswith(b"\n\n")
    line = frame.split(b"\n")[-3]
    assert line.startswith(b"data: ")
    return line[len(b"data: ") :]


def forward(passthrough, data: str, name: str | None = None) -> bytes | None:
    return passthrough.forward(name, orjson.loads(data), data)


def test_openai_chunk_keeps_the_providers_bytes_with_only_the_model_rewritten():
    data = '{"id":"c1", "object":"chat.completion.chunk","created":1,"model" : "gpt-4o-2024",' \
           '"choices":[{"index":0,"delta":{"content":"say \\"model\\": \\"x\\" 1.0"}}],"temperature":1.0}'  # fmt: skip
    out = forward(OpenAIPassthrough(model="my-alias", include_usage=False), data)
    assert data_of(out) == data.replace('"model" : "gpt-4o-2024"', '"model":"my-alias"').encode()
    # What the re-encoding would have lost: the provider's own spacing and float spelling.
    assert b'"temperature":1.0' in out and b'"id":"c1", "object"' in out


def test_openai_usage_null_of_every_chunk_is_cut_from_the_bytes_when_the_client_did_not_ask_for_usage():
    passthrough = OpenAIPassthrough(model="m", include_usage=False)
    first = '{"id":"c","model":"up","choices":[{"delta":{"content":"hi"}}],"usage":null}'
    middle = '{"id":"c","usage": null, "model":"up","choices":[]}'
    assert orjson.loads(data_of(forward(passthrough, first))) == {
        "id": "c",
        "model": "m",
        "choices": [{"delta": {"content": "hi"}}],
    }
    assert data_of(forward(passthrough, middle)) == b'{"id":"c", "model":"m","choices":[]}'
    # The usage-only chunk asked for on the client's behalf is swallowed.
    last = '{"id":"c","model":"up","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    assert forward(passthrough, last) is None


def test_openai_client_that_asked_for_usage_gets_the_usage_chunk_verbatim():
    passthrough = OpenAIPassthrough(model="m", include_usage=True)
    data = '{"id":"c","model":"up","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
    assert data_of(forward(passthrough, data)) == data.replace('"up"', '"m"').encode()
    assert passthrough.usage_seen


def test_events_that_cannot_go_verbatim_are_re_encoded():
    passthrough = OpenAIPassthrough(model="m", include_usage=False)
    multi_line = '{"id":"c",\n"model":"up","choices":[]}'
    assert data_of(forward(passthrough, multi_line)) == b'{"id":"c","model":"m","choices":[]}'
    nested = '{"id":"c","model":"up","choices":[{"delta":{"model":"inner"}}]}'
    assert orjson.loads(data_of(forward(passthrough, nested))) == {
        "id": "c",
        "model": "m",
        "choices": [{"delta": {"model": "inner"}}],
    }
    not_a_string = '{"id":"c","model":null,"choices":[{"delta":{"model":"inner"}}]}'
    assert orjson.loads(data_of(forward(passthrough, not_a_string)))["choices"][0]["delta"]["model"] == "inner"


def test_anthropic_deltas_pass_byte_for_byte_and_message_start_gets_our_model():
    passthrough = AnthropicPassthrough(model="claude-alias")
    delta = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a \\"model\\":\\"b\\""}}'
    assert forward(passthrough, delta, "content_block_delta") == (
        b"event: content_block_delta\ndata: " + delta.encode() + b"\n\n"
    )
    start = '{"type":"message_start","message":{"id":"m1","model":"claude-x","usage":{"input_tokens":3}}}'
    out = forward(passthrough, start, "message_start")
    assert orjson.loads(data_of(out))["message"]["model"] == "claude-alias"


def test_responses_text_deltas_pass_byte_for_byte():
    passthrough = ResponsesPassthrough(model="alias")
    delta = '{"type":"response.output_text.delta","sequence_number":4,"delta":"hi"}'
    assert data_of(forward(passthrough, delta, "response.output_text.delta")) == delta.encode()
    created = '{"type":"response.created","response":{"id":"r","model":"up"}}'
    assert orjson.loads(data_of(forward(passthrough, created, "response.created")))["response"]["model"] == "alias"


json_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | json_text
member_names = st.sampled_from(["id", "object", "model", "usage", "choices", "note", "x"]) | json_text


def json_values(depth: int = 2):
    if depth == 0:
        return json_scalar
    return (
        json_scalar
        | st.lists(json_values(depth - 1), max_size=3)
        | st.dictionaries(member_names, json_values(depth - 1), max_size=3)
    )


@given(
    chunk=st.dictionaries(member_names, json_values(), max_size=6),
    model=json_text,
    include_usage=st.booleans(),
    spaced=st.booleans(),
)
def test_verbatim_and_re_encoded_forwarding_give_the_same_json(chunk, model, include_usage, spaced):
    data = orjson.dumps(chunk).decode()
    if spaced:
        # Another encoder's spacing (Python's json.dumps style) around every separator outside strings.
        import json

        data = json.dumps(chunk, ensure_ascii=False)
    verbatim = OpenAIPassthrough(model=model, include_usage=include_usage).forward(None, orjson.loads(data), data)
    encoded = OpenAIPassthrough(model=model, include_usage=include_usage).forward(None, orjson.loads(data), None)
    if encoded is None:
        assert verbatim is None
    else:
        assert orjson.loads(data_of(verbatim)) == orjson.loads(data_of(encoded))


@given(st.dictionaries(member_names, json_values(), max_size=6), json_text)
def test_model_member_replacement_changes_only_that_member(chunk, model):
    """Called as the passthrough calls them: when the parsed event has the member at its top level."""
    data = orjson.dumps(chunk).decode()
    if isinstance(chunk.get("model"), str):
        replaced = data_model_replaced(data, model_member(model))
        if replaced is not None:
            assert orjson.loads(replaced) == {**chunk, "model": model}
    if "usage" in chunk and chunk["usage"] is None:
        removed = data_null_member_removed(data, "usage")
        if removed is not None:
            assert orjson.loads(removed) == {k: v for k, v in chunk.items() if k != "usage"}
