"""Flat names for namespaced tools (pure)."""

from hypothesis import given
from hypothesis import strategies as st

from providers.dialects.canonical import ToolCall, ToolCallDelta
from providers.dialects.namespaces import TOOL_NAME, client_names, client_parts, flat_name

names = st.text(min_size=1, max_size=90)


def test_the_plain_form_when_it_is_free_and_valid():
    assert flat_name("multi_agent_v1", "close_agent", set()) == "multi_agent_v1__close_agent"


def test_a_taken_or_invalid_name_gets_a_digest():
    taken = {"ns__tool"}
    other = flat_name("ns", "tool", taken)
    assert other != "ns__tool" and other.startswith("ns__tool_") and TOOL_NAME.match(other)
    assert TOOL_NAME.match(flat_name("crm.v2", "find contact", set()))


@given(names, names, st.sets(st.text(min_size=1, max_size=70), max_size=5))
def test_any_namespace_and_name_get_a_valid_free_name_the_same_each_time(namespace, name, taken):
    flat = flat_name(namespace, name, taken)
    assert TOOL_NAME.match(flat) and flat not in taken
    assert flat_name(namespace, name, taken) == flat


@given(st.lists(st.tuples(names, names), min_size=1, max_size=20, unique=True))
def test_names_given_in_turn_never_collide(pairs):
    taken: set[str] = set()
    for namespace, name in pairs:
        flat = flat_name(namespace, name, taken)
        assert flat not in taken
        taken.add(flat)


def test_calls_are_named_back_and_others_left_alone():
    namespaced = {"ns__close": ("ns", "close")}
    events = [ToolCallDelta(0, "call_1", "ns__close", ""), ToolCallDelta(0, arguments="{}"), ToolCallDelta(1, "c", "x")]
    renamed = client_names(events, namespaced)
    assert (renamed[0].namespace, renamed[0].name) == ("ns", "close")
    assert renamed[1:] == events[1:] and events[0].name == "ns__close"  # the originals are not changed
    [call, plain] = client_parts([ToolCall("c1", "ns__close", "{}"), ToolCall("c2", "plain", "{}")], namespaced)
    assert (call.namespace, call.name) == ("ns", "close") and plain.namespace is None
