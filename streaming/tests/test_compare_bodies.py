"""compare_calls: any JSON body becomes per-model chat bodies or a 400 naming the problem, never a crash."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigateway.errors import GatewayError
from streaming.compare import compare_calls


def compare_bodies(body: dict, *, cap: int) -> dict[str, dict]:
    return {name: chat for name, (chat, _) in compare_calls(body, cap=cap).items()}


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)  # fmt: skip
FIELDS = ["models", "messages", "messages_by_model", "max_tokens", "temperature", "stream", "stream_options", "n"]
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=10)}
)
valid = st.fixed_dictionaries(
    {
        "models": st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True),
        "messages": st.lists(message, min_size=1, max_size=3),
    },
    optional={"max_tokens": st.integers(1, 100), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1)},
)
# A valid body with one field replaced by any JSON value: the edge cases sit next to the valid ones.
mutated = valid.flatmap(
    lambda body: st.tuples(st.sampled_from(FIELDS), json_values).map(lambda change: {**body, change[0]: change[1]})
)


def _check(body: dict) -> None:
    try:
        bodies = compare_bodies(body, cap=3)
    except GatewayError as error:
        assert error.status == 400 and error.message
        return
    assert 1 <= len(bodies) <= 3
    assert list(bodies) == body["models"]
    for name, chat in bodies.items():
        assert chat["model"] == name and chat["stream"] is True
        assert isinstance(chat["messages"], list) and chat["messages"]
        assert "models" not in chat and "messages_by_model" not in chat


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=6))
def test_any_json_object(body):
    _check(body)


@settings(max_examples=300, deadline=None)
@given(valid)
def test_valid_bodies_become_one_chat_body_per_model(body):
    bodies = compare_bodies(body, cap=3)
    assert list(bodies) == body["models"]
    for chat in bodies.values():
        assert chat["messages"] == body["messages"]
        assert chat.get("max_tokens") == body.get("max_tokens")


@settings(max_examples=500, deadline=None)
@given(mutated)
def test_mutated_bodies(body):
    _check(body)


def test_cap_is_named():
    with pytest.raises(GatewayError) as raised:
        compare_bodies({"models": ["a", "b", "c"], "messages": [{"role": "user", "content": "x"}]}, cap=2)
    assert raised.value.status == 400 and "at most 2 models" in raised.value.message


def test_each_model_gets_its_own_history():
    history_a = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "2"},
    ]
    history_b = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "b1"},
        {"role": "user", "content": "2"},
    ]
    bodies = compare_bodies(
        {"models": ["a", "b"], "messages_by_model": {"a": history_a, "b": history_b}, "temperature": 0.5}, cap=4
    )
    assert bodies["a"]["messages"] == history_a and bodies["b"]["messages"] == history_b
    assert bodies["a"]["temperature"] == bodies["b"]["temperature"] == 0.5
