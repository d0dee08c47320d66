"""The store plan of a Responses body (pure): whatever the input items hold, planning never fails; the
dialect refuses a bad item afterwards with a 400 naming it."""

from hypothesis import given
from hypothesis import strategies as st

from accounts.context import KeyContext
from streaming.responses_store import store_plan

CTX = KeyContext(
    key_id=1, key_prefix="sk-gw-x", key_name="k", owner_id=1, is_staff=False, tier_name="t", rpm=None, tpm=None,
    max_concurrent=None, daily_tokens=None, max_output_tokens=None, max_compare_models=4,
)  # fmt: skip

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def test_an_item_whose_type_is_not_text_is_planned_with_a_generic_id():
    plan = store_plan(CTX, {"input": [{"type": ["message"], "role": "user"}, {"type": 7}]}, None)
    assert [item["id"][:5] for item in plan.input_items] == ["item_", "item_"]


@given(items=st.lists(st.dictionaries(st.sampled_from(["type", "role", "content", "id"]), JSON), max_size=4))
def test_planning_any_input_items_never_fails(items):
    plan = store_plan(CTX, {"input": items}, None)
    assert len(plan.input_items) == len(items)
    assert all(isinstance(item["id"], str) and item["id"] for item in plan.input_items)
