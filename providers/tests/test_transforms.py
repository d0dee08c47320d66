"""Request transforms: each op on bodies and headers, the validation messages, and that neither
validation nor applying ever raises whatever JSON arrives."""

import copy
import logging

import orjson
import pytest
from django.core.exceptions import ValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.models import Deployment, Model, Provider
from providers.routing import route_table_load
from providers.transforms import (
    Transform,
    TransformsInvalid,
    transforms_apply,
    transforms_apply_body,
    transforms_compile,
    transforms_describe,
    transforms_validate,
)


def apply(raw: list[dict], body: dict, headers: dict | None = None) -> tuple[dict, dict]:
    return transforms_apply(transforms_compile(raw), body, headers or {})


def body_after(raw: list[dict], body: dict) -> dict:
    return apply(raw, body)[0]


# Each op


def test_drop_removes_a_field_at_any_depth_and_ignores_absent_ones():
    body = {"metadata": {"user_id": "u-1", "tag": "x"}, "temperature": 1, "top_k": 5}
    raw = [{"op": "drop", "path": "metadata.user_id"}, {"op": "drop", "path": "top_k"}, {"op": "drop", "path": "seed"}]
    assert body_after(raw, body) == {"metadata": {"tag": "x"}, "temperature": 1}


def test_default_sets_only_absent_fields_and_creates_the_objects_on_the_way():
    raw = [
        {"op": "default", "path": "temperature", "value": 0.7},
        {"op": "default", "path": "top_p", "value": 0.9},
        {"op": "default", "path": "provider.sort", "value": "price"},
    ]
    out = body_after(raw, {"temperature": 0, "top_p": None})
    # A field sent as null is present: the client said something about it.
    assert out == {"temperature": 0, "top_p": None, "provider": {"sort": "price"}}


def test_force_always_sets_and_keeps_the_rest_of_the_object():
    raw = [
        {"op": "force", "path": "stream_options.include_usage", "value": True},
        {"op": "force", "path": "reasoning", "value": {"effort": "low", "exclude": [1, 2]}},
    ]
    out = body_after(raw, {"stream_options": {"include_usage": False, "x": 1}, "reasoning": "high"})
    assert out == {"stream_options": {"include_usage": True, "x": 1}, "reasoning": {"effort": "low", "exclude": [1, 2]}}
    assert body_after(raw, {}) == {
        "stream_options": {"include_usage": True},
        "reasoning": {"effort": "low", "exclude": [1, 2]},
    }


def test_cap_lowers_numbers_above_the_max_and_leaves_everything_else():
    raw = [{"op": "cap", "path": "max_tokens", "max": 8192}]
    assert body_after(raw, {"max_tokens": 32000}) == {"max_tokens": 8192}
    assert body_after(raw, {"max_tokens": 8192.5}) == {"max_tokens": 8192}
    assert body_after(raw, {"max_tokens": 100}) == {"max_tokens": 100}
    assert body_after(raw, {}) == {}
    for not_a_number in ("99999", True, None, [99999], {"n": 99999}):
        assert body_after(raw, {"max_tokens": not_a_number}) == {"max_tokens": not_a_number}


def test_rename_moves_a_field_overwriting_the_target_and_is_a_no_op_when_absent():
    raw = [{"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"}]
    assert body_after(raw, {"max_tokens": 10, "max_completion_tokens": 99}) == {"max_completion_tokens": 10}
    assert body_after(raw, {"max_completion_tokens": 99}) == {"max_completion_tokens": 99}
    nested = [{"op": "rename", "path": "metadata.user_id", "to": "user"}]
    assert body_after(nested, {"metadata": {"user_id": "u"}}) == {"metadata": {}, "user": "u"}


def test_rename_into_a_path_through_a_non_object_leaves_the_field_where_it_was():
    raw = [{"op": "rename", "path": "max_tokens", "to": "options.max"}]
    assert body_after(raw, {"max_tokens": 5, "options": "fast"}) == {"max_tokens": 5, "options": "fast"}


def test_paths_through_non_objects_are_skipped():
    body = {"metadata": "plain", "messages": [{"role": "user"}], "stream_options": None}
    raw = [
        {"op": "drop", "path": "metadata.user_id"},
        {"op": "default", "path": "messages.role", "value": "x"},
        {"op": "force", "path": "stream_options.include_usage", "value": True},
        {"op": "cap", "path": "metadata.n", "max": 1},
    ]
    assert body_after(raw, body) == body


def test_header_adds_or_replaces_whatever_the_spelling_and_leaves_the_body_alone():
    raw = [
        {"op": "header", "name": "HTTP-Referer", "value": "https://app.example.com"},
        {"op": "header", "name": "X-Title", "value": "Gateway"},
    ]
    headers = {"authorization": "Bearer sk-up", "http-referer": "old", "content-type": "application/json"}
    body, out = apply(raw, {"a": 1}, headers)
    assert body == {"a": 1}
    assert out == {
        "authorization": "Bearer sk-up",
        "content-type": "application/json",
        "HTTP-Referer": "https://app.example.com",
        "X-Title": "Gateway",
    }


def test_transforms_run_in_order():
    cap_then_rename = [
        {"op": "cap", "path": "max_tokens", "max": 100},
        {"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"},
    ]
    rename_then_cap = list(reversed(cap_then_rename))
    assert body_after(cap_then_rename, {"max_tokens": 500}) == {"max_completion_tokens": 100}
    assert body_after(rename_then_cap, {"max_tokens": 500}) == {"max_completion_tokens": 500}


def test_the_callers_body_and_headers_are_never_changed():
    body = {"metadata": {"user_id": "u", "deep": {"a": 1}}, "max_tokens": 10_000, "stream_options": {"x": 1}}
    headers = {"authorization": "Bearer k"}
    before = copy.deepcopy((body, headers))
    raw = [
        {"op": "drop", "path": "metadata.user_id"},
        {"op": "force", "path": "metadata.deep.b", "value": 2},
        {"op": "force", "path": "stream_options.include_usage", "value": True},
        {"op": "cap", "path": "max_tokens", "max": 10},
        {"op": "rename", "path": "metadata.deep", "to": "deep"},
        {"op": "header", "name": "X-Title", "value": "t"},
    ]
    out_body, out_headers = apply(raw, body, headers)
    assert (body, headers) == before
    assert out_body == {
        "metadata": {},
        "max_tokens": 10,
        "stream_options": {"x": 1, "include_usage": True},
        "deep": {"a": 1, "b": 2},
    }
    assert out_headers == {"authorization": "Bearer k", "X-Title": "t"}


def test_a_placed_value_is_a_fresh_object_for_every_request():
    transforms = transforms_compile([{"op": "force", "path": "provider", "value": {"order": ["a", "b"]}}])
    first = transforms_apply_body(transforms, {})
    first["provider"]["order"].append("mutated")
    assert transforms_apply_body(transforms, {}) == {"provider": {"order": ["a", "b"]}}


def test_compiled_transforms_are_immutable_and_hashable():
    transforms = transforms_compile(
        [{"op": "force", "path": "a", "value": {"b": [1, {"c": None}]}}, {"op": "header", "name": "X-A", "value": "v"}]
    )
    assert isinstance(transforms, tuple) and all(isinstance(t, Transform) for t in transforms)
    assert hash(transforms) == hash(
        transforms_compile(
            [
                {"op": "force", "path": "a", "value": {"b": [1, {"c": None}]}},
                {"op": "header", "name": "X-A", "value": "v"},
            ]
        )
    )


def test_descriptions_name_fields_and_headers_but_never_values():
    raw = [
        {"op": "header", "name": "X-Secret-Token", "value": "tok-abcdef-123456"},
        {"op": "force", "path": "user", "value": "someone@example.com"},
        {"op": "cap", "path": "max_tokens", "max": 8192},
        {"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"},
    ]
    transforms = transforms_compile(raw)
    text = transforms_describe(transforms) + repr(transforms)
    assert transforms_describe(transforms) == (
        "header X-Secret-Token, force user, cap max_tokens at 8192, rename max_tokens to max_completion_tokens"
    )
    assert "tok-abcdef-123456" not in text and "someone@example.com" not in text


# Validation


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"op": "drop"}, "request transforms must be a list, not an object"),
        ([{"op": "cap", "path": "max_tokens"}], "transform 1: 'cap' needs a numeric 'max'"),
        (
            [{"op": "drop", "path": "a"}, {"op": "cap", "path": "max_tokens", "max": "8k"}],
            "transform 2: 'cap' needs a numeric 'max', not a string",
        ),
        ([{"op": "cap", "path": "n", "max": True}], "transform 1: 'cap' needs a numeric 'max', not a boolean"),
        (["drop"], "transform 1: must be an object with an 'op', not a string"),
        ([{"path": "a"}], "transform 1: needs an 'op', one of: drop, default, force, cap, rename, header"),
        ([{"op": "remove", "path": "a"}], "transform 1: unknown op 'remove'; expected one of: drop, default, force"),
        ([{"op": "drop", "path": "a", "value": 1}], "transform 1: 'drop' does not take 'value' (it takes: path)"),
        ([{"op": "drop", "path": ""}], "transform 1: 'path' must not be empty"),
        ([{"op": "drop", "path": "a..b"}], "transform 1: 'path' 'a..b' has an empty field name"),
        ([{"op": "drop", "path": 3}], "transform 1: 'drop' needs a dotted field 'path', not a number"),
        ([{"op": "default", "path": "a"}], "transform 1: 'default' needs a JSON 'value'"),
        ([{"op": "force", "path": "a", "value": float("nan")}], "transform 1: 'value' must be a finite number"),
        ([{"op": "force", "path": "a", "value": 2**70}], "transform 1: 'value' holds an integer too large for JSON"),
        ([{"op": "force", "path": "a", "value": "\ud800"}], "transform 1: 'value' holds text that is not valid"),
        ([{"op": "rename", "path": "a"}], "transform 1: 'rename' needs a dotted field 'to'"),
        ([{"op": "rename", "path": "a", "to": "a"}], "transform 1: 'rename' needs a 'to' that differs from 'path'"),
        (
            [{"op": "force", "path": "stream", "value": False}],
            "transform 1: 'path' 'stream' is set by the gateway and cannot be changed by a transform",
        ),
        ([{"op": "rename", "path": "engine", "to": "model"}], "transform 1: 'to' 'model' is set by the gateway"),
        (
            [{"op": "header", "name": "Authorization", "value": "Bearer x"}],
            "transform 1: header 'Authorization' is set by the gateway and cannot be overridden",
        ),
        (
            [{"op": "header", "name": "x-api-key", "value": "k"}],
            "transform 1: header 'x-api-key' is set by the gateway",
        ),
        ([{"op": "header", "name": "Bad Name", "value": "v"}], "transform 1: 'Bad Name' is not a valid header name"),
        (
            [{"op": "header", "name": "X-A", "value": "a\r\nX-B: b"}],
            "transform 1: header 'value' must be printable ASCII on one line",
        ),
        ([{"op": "header", "name": "X-A", "value": 1}], "transform 1: 'header' needs a string 'value', not a number"),
        ([{"op": "header", "name": "X-A", "value": "v\n"}], "transform 1: header 'value' must be printable ASCII"),
        ([{"op": "header", "name": "X-A\n", "value": "v"}], "transform 1: 'X-A\n' is not a valid header name"),
    ],
)
def test_each_bad_rule_is_named_with_its_position(raw, problem):
    problems = transforms_validate(raw)
    assert any(found.startswith(problem) for found in problems), problems
    with pytest.raises(TransformsInvalid):
        transforms_compile(raw)


def test_every_problem_is_reported_not_only_the_first():
    raw = [{"op": "cap", "path": "", "max": "x", "extra": 1}, {"op": "drop", "path": "ok"}, 7]
    assert transforms_validate(raw) == [
        "transform 1: 'cap' does not take 'extra' (it takes: path, max)",
        "transform 1: 'path' must not be empty",
        "transform 1: 'cap' needs a numeric 'max', not a string",
        "transform 3: must be an object with an 'op', not a number",
    ]


@pytest.mark.parametrize("raw", [[], None])
def test_no_rules_are_valid_and_compile_to_nothing(raw):
    assert transforms_validate(raw) == []
    assert transforms_compile(raw) == ()


# Properties: nothing JSON can hold makes validation or a validated rule raise

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
FIELD_NAMES = ["a", "b", "max_tokens", "metadata"]
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=16,
)
bodies = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), json_values, max_size=5)
paths = st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=3).map(".".join)
numbers = st.integers(min_value=-(2**40), max_value=2**40) | st.floats(allow_nan=False, allow_infinity=False)
valid_rules = st.lists(
    st.one_of(
        st.fixed_dictionaries({"op": st.just("drop"), "path": paths}),
        st.fixed_dictionaries({"op": st.sampled_from(["default", "force"]), "path": paths, "value": json_values}),
        st.fixed_dictionaries({"op": st.just("cap"), "path": paths, "max": numbers}),
        st.fixed_dictionaries({"op": st.just("rename"), "path": paths, "to": paths}).filter(
            lambda rule: rule["path"] != rule["to"]
        ),
        st.fixed_dictionaries(
            {
                "op": st.just("header"),
                "name": st.sampled_from(["X-A", "x-a", "HTTP-Referer"]),
                "value": st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
            }
        ),
    ),
    max_size=6,
)
# Rules shaped almost right: the branches of validation sit next to the valid cases.
rule_like = st.dictionaries(
    st.sampled_from(["op", "path", "to", "value", "max", "name", "extra"]),
    st.sampled_from(["drop", "default", "force", "cap", "rename", "header", "model", "a.b", "", "."]) | json_values,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(json_values | st.lists(rule_like | json_values, max_size=5))
def test_validation_never_raises_on_any_json(raw):
    problems = transforms_validate(raw)
    assert all(isinstance(problem, str) and problem for problem in problems)
    if not problems:
        transforms_compile(raw)


@settings(max_examples=300, deadline=None)
@given(valid_rules, bodies)
def test_validated_rules_never_raise_and_leave_the_input_alone(raw, body):
    assert transforms_validate(raw) == []
    before = copy.deepcopy(body)
    out, headers = apply(raw, body, {"authorization": "Bearer k"})
    assert body == before
    assert headers["authorization"] == "Bearer k"
    orjson.dumps(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(rule_like, max_size=4), bodies)
def test_rules_that_pass_validation_never_raise(raw, body):
    if transforms_validate(raw) == []:
        out, _ = apply(raw, body)
        orjson.dumps(out)


# The model and the route table


@pytest.mark.django_db
def test_the_model_refuses_a_bad_rule_and_normalises_an_empty_one():
    provider = Provider(
        name="p", base_url="https://api.example.com/v1", request_transforms=[{"op": "cap", "path": "n"}]
    )
    with pytest.raises(ValidationError) as excinfo:
        provider.full_clean()
    assert excinfo.value.message_dict["request_transforms"] == ["transform 1: 'cap' needs a numeric 'max'"]
    provider.request_transforms = None
    provider.full_clean()
    assert provider.request_transforms == []


@pytest.mark.django_db
def test_the_route_table_carries_compiled_rules_and_ignores_a_row_that_is_not_valid(caplog):
    good = Provider.objects.create(
        name="good", base_url="https://a.example.com/v1", request_transforms=[{"op": "drop", "path": "user"}]
    )
    bad = Provider.objects.create(name="bad", base_url="https://b.example.com/v1")
    Provider.objects.filter(pk=bad.pk).update(request_transforms=[{"op": "cap", "path": "n"}])
    model = Model.objects.create(name="m")
    Deployment.objects.create(model=model, provider=good, upstream_model="x")
    Deployment.objects.create(model=model, provider=bad, upstream_model="y")

    with caplog.at_level(logging.ERROR, logger="providers.routing"):
        table = route_table_load()
    by_name = {route.provider.name: route.provider for route in table.routes["m"]}
    assert by_name["good"].request_transforms == (Transform(op="drop", path=("user",)),)
    assert by_name["bad"].request_transforms == ()
    assert "provider bad: request_transforms ignored: transform 1: 'cap' needs a numeric 'max'" in caplog.text
