"""Tool-call ids across dialects (providers.dialects.tool_ids): whatever id a provider writes, the client sees
one in its own format, and that id reads back to exactly the provider's."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from providers.dialects.canonical import ChatRequest, Message, Text, ToolCall, ToolResult
from providers.dialects.tool_ids import (
    ANTHROPIC_IDS,
    ANTHROPIC_TOOL_ID,
    OPENAI_IDS,
    STYLES,
    tool_id_for_client,
    tool_id_for_provider,
    tool_ids_restored,
)

ANTHROPIC_CHARACTERS = "abcXYZ019_-"
# Ids that start like the forms the mapping writes, so every branch meets its near misses.
PREFIXES = ("", "call_", "toolu_", "call_toolu_", "toolu_call_", "call_b64-", "toolu_b64-", "b64-", "call", "toolu")
PROVIDER_IDS = st.one_of(
    st.text(min_size=1),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), st.text()),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), st.text(ANTHROPIC_CHARACTERS)),
).filter(bool)


def in_client_format(client_id: str, style) -> bool:
    """The client's prefix, and only characters every dialect accepts (Anthropic's rule)."""
    return client_id.startswith(style.prefix) and bool(ANTHROPIC_TOOL_ID.fullmatch(client_id))


@pytest.mark.parametrize("style", [ANTHROPIC_IDS, OPENAI_IDS], ids=["anthropic", "openai"])
@given(provider_id=PROVIDER_IDS)
def test_any_provider_id_round_trips_through_the_client_format(style, provider_id):
    client_id = tool_id_for_client(provider_id, style)
    assert in_client_format(client_id, style), client_id
    assert tool_id_for_provider(client_id, style) == provider_id


@pytest.mark.parametrize(
    ("provider_id", "anthropic_client", "openai_client"),
    [
        # An OpenAI provider's id: carried whole for an Anthropic client, as it is for OpenAI clients.
        ("call_abc123", "toolu_call_abc123", "call_abc123"),
        # An Anthropic provider's id: the reverse.
        ("toolu_01ABCdef", "toolu_01ABCdef", "call_toolu_01ABCdef"),
        # Characters Anthropic refuses (Gemini-compatible, vLLM/Kimi), and ids of no family: encoded.
        ("call_0|abc", "toolu_b64-Y2FsbF8wfGFiYw", "call_b64-Y2FsbF8wfGFiYw"),
        (
            "functions.get_weather:0",
            "toolu_b64-ZnVuY3Rpb25zLmdldF93ZWF0aGVyOjA",
            "call_b64-ZnVuY3Rpb25zLmdldF93ZWF0aGVyOjA",
        ),
        ("abc123", "toolu_b64-YWJjMTIz", "call_b64-YWJjMTIz"),
    ],
)
def test_the_ids_providers_write(provider_id, anthropic_client, openai_client):
    assert tool_id_for_client(provider_id, ANTHROPIC_IDS) == anthropic_client
    assert ANTHROPIC_TOOL_ID.fullmatch(anthropic_client)
    assert tool_id_for_client(provider_id, OPENAI_IDS) == openai_client
    assert tool_id_for_provider(anthropic_client, ANTHROPIC_IDS) == provider_id
    assert tool_id_for_provider(openai_client, OPENAI_IDS) == provider_id


def test_a_missing_id_is_made_up_in_the_client_format_and_each_is_new():
    first, second = tool_id_for_client("", ANTHROPIC_IDS), tool_id_for_client(None, ANTHROPIC_IDS)
    assert first != second and ANTHROPIC_TOOL_ID.fullmatch(first) and first.startswith("toolu_")
    assert tool_id_for_client(None, OPENAI_IDS).startswith("call_")


@pytest.mark.parametrize(
    ("style", "client_id"),
    [
        # Ids the gateway never wrote: Claude Code's own history, another provider of the client's format.
        (ANTHROPIC_IDS, "toolu_01XYZ"),
        (OPENAI_IDS, "call_abc"),
        (OPENAI_IDS, "functions.get_weather:0"),
        # Near misses of the encoded form: not base64url of text, or not as _encoded writes it.
        (ANTHROPIC_IDS, "toolu_b64-!!"),
        (ANTHROPIC_IDS, "toolu_b64-YWJjMTIz="),
        (ANTHROPIC_IDS, "toolu_b64-YWJjMTJ"),
        (OPENAI_IDS, "call_b64-A"),
        (OPENAI_IDS, "call_b64-__8"),
    ],
)
def test_an_id_the_gateway_did_not_write_goes_to_the_provider_as_it_is(style, client_id):
    assert tool_id_for_provider(client_id, style) == client_id


def _conversation(call_id: str, result_id: str | None = None) -> ChatRequest:
    call = ToolCall(call_id, "get_weather", "{}")
    result = ToolResult(call_id if result_id is None else result_id, [Text("18C")])
    return ChatRequest(messages=[Message("assistant", [call]), Message("user", [result])])


def _ids(request: ChatRequest) -> tuple[str, str]:
    return request.messages[0].parts[0].id, request.messages[1].parts[0].tool_call_id


@pytest.mark.parametrize(
    ("client", "provider"),
    [(c, p) for c in STYLES for p in STYLES if c != p],
)
@given(provider_id=PROVIDER_IDS)
def test_the_provider_gets_its_own_id_back_from_every_client(client, provider, provider_id):
    shown = tool_id_for_client(provider_id, STYLES[client])
    restored = tool_ids_restored(_conversation(shown), client=client, provider=provider)
    assert _ids(restored) == (provider_id, provider_id)


@pytest.mark.parametrize("client", ["openai", "responses"])
@given(client_id=st.text())
def test_an_id_the_gateway_did_not_write_reaches_anthropic_in_a_form_it_accepts(client, client_id):
    assume(tool_id_for_provider(client_id, OPENAI_IDS) == client_id)  # not one of the gateway's forms
    call_id, result_id = _ids(tool_ids_restored(_conversation(client_id), client=client, provider="anthropic"))
    assert call_id == result_id  # a call and its result still share one id
    assert ANTHROPIC_TOOL_ID.fullmatch(call_id) or not client_id
    # Nothing to refuse for an OpenAI provider: it gets the id as it came.
    to_openai = tool_ids_restored(_conversation(client_id), client=client, provider="openai")
    assert _ids(to_openai) == (client_id, client_id)


def test_a_request_gets_the_providers_ids_and_the_clients_request_is_left_as_sent():
    call = ToolCall("toolu_call_abc", "get_weather", "{}", namespace="tools")
    result = ToolResult("toolu_call_abc", [Text("18C")])
    odd = ToolCall("toolu_b64-ZnVuY3Rpb25zLmdldF93ZWF0aGVyOjA", "get_weather", "{}")
    request = ChatRequest(
        messages=[Message("user", [Text("weather?")]), Message("assistant", [call, odd]), Message("user", [result])]
    )

    restored = tool_ids_restored(request, client="anthropic", provider="openai")

    assert restored.messages[1].parts == [
        ToolCall("call_abc", "get_weather", "{}", namespace="tools"),
        ToolCall("functions.get_weather:0", "get_weather", "{}"),
    ]
    assert restored.messages[2].parts == [ToolResult("call_abc", [Text("18C")])]
    assert restored.messages[0] == request.messages[0]
    assert request.messages[1].parts == [call, odd] and request.messages[2].parts == [result]
    assert tool_ids_restored(request, client="compare", provider="openai") is request  # shows no tool calls


def test_every_client_dialect_has_a_style():
    from providers.dialects import DIALECTS

    assert set(STYLES) == set(DIALECTS)
