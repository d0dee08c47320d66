"""Structured admin editors for the JSON lists ops edit by hand: names (a model's aliases and fallbacks),
a model's kinds (checkboxes) and a provider's request transforms (rows of operations).

Each widget renders one row of inputs per item plus blank rows, so the form works without JavaScript;
`providers/admin_widgets.js` adds, removes and moves rows, shows the inputs a transform's op takes and
checks rows as they are typed. The posted rows become the JSON the model stores; the server's checks
(the fields here, then Model.clean and Provider.clean) decide, and their messages name the row, which the
widget repeats beside it. A JSON value posted whole under the field's own name (scripts, a value the rows
cannot show) is still read as JSON.
"""

import json
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from providers.models import MODEL_KINDS, model_kinds_default
from providers.route_rules import is_pattern
from providers.transforms import GATEWAY_FIELDS, GATEWAY_HEADERS, OP_KEYS, transforms_problems

EXTRA_ROWS = 2
TRANSFORM_INPUTS = ("op", "path", "to", "max", "name", "value")
# JSON's number grammar, near enough: what a row's "max" may hold (the script checks the same).
NUMBER_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER_RE = re.compile(r"-?\d+")
_ROW_PREFIX_RE = re.compile(r"^(?:(?P<field>[a-z_]+)\[(?P<index>\d+)\]|(?P<noun>[a-z ]+?) (?P<number>\d+):)")
_QUOTED_RE = re.compile(r"'([^']*)'")


def widget_media() -> forms.Media:
    return forms.Media(
        css={"all": ["providers/admin_widgets.css"]},
        js=[forms.Script("providers/admin_widgets.js", type="module")],
    )


class Rows(list):
    """Items read from posted rows, with the rows as typed (shown again when the form has errors) and the
    problems found reading them."""

    def __init__(self, items: list, *, typed: list[dict[str, str]], problems: list[tuple[int, str]]):
        super().__init__(items)
        self.typed = typed
        self.problems = problems


def _posted_rows(data, name: str, inputs: tuple[str, ...]) -> list[dict[str, str]] | None:
    """The rows posted for a field, blank ones left out; None when the rows came incomplete."""
    columns = {}
    for key in inputs:
        field = f"{name}-{key}"
        getlist = getattr(data, "getlist", None)
        values = getlist(field) if getlist is not None else data.get(field, [])
        columns[key] = [values] if isinstance(values, str) else list(values)
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        return None
    count = lengths.pop() if lengths else 0
    rows = [{key: str(columns[key][index]) for key in inputs} for index in range(count)]
    return [row for row in rows if any(value.strip() for value in row.values())]


class RowsWidget(forms.Widget):
    """A list edited as rows of inputs; subclasses say which inputs a row has and how an item fills them."""

    inputs: tuple[str, ...] = ()
    row_template = ""
    noun = "item"

    def __init__(self, attrs=None, *, noun: str | None = None, extra: int = EXTRA_ROWS):
        super().__init__(attrs)
        self.noun = noun or self.noun
        self.extra = extra
        # Set by the form after validation: row number (1-based) -> messages about that row.
        self.row_errors: dict[int, list[str]] = {}

    @property
    def media(self):
        return widget_media()

    def posted_as_rows(self, data, name: str) -> bool:
        return any(f"{name}-{key}" in data for key in self.inputs)

    def value_from_datadict(self, data, files, name):
        if not self.posted_as_rows(data, name):
            # A JSON value posted whole; or the widget's empty input alone: every row was removed.
            return data.get(name)
        typed = _posted_rows(data, name, self.inputs)
        if typed is None:
            return Rows([], typed=[], problems=[(0, "the rows arrived incomplete; reload the page and try again")])
        return self.rows_read(typed)

    def value_omitted_from_data(self, data, files, name):
        return name not in data and not self.posted_as_rows(data, name)

    def id_for_label(self, id_):
        return ""  # a group of inputs: the label names the group, each input has its own aria-label

    def format_value(self, value):
        return value

    def rows_read(self, typed: list[dict[str, str]]) -> Rows:
        raise NotImplementedError

    def item_row(self, item: Any) -> dict[str, str] | None:
        """An item as the strings its row shows; None when no row can show it faithfully."""
        raise NotImplementedError

    def typed_rows(self, value) -> list[dict[str, str]] | None:
        if isinstance(value, Rows):
            return value.typed
        if value is None or value == "":
            return []
        if isinstance(value, InvalidJSONInput):
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if value is None:
            return []
        if not isinstance(value, list):
            return None
        rows = [self.item_row(item) for item in value]
        return None if any(row is None for row in rows) else rows

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        typed = self.typed_rows(value)
        widget = context["widget"]
        widget.update(
            noun=self.noun,
            row_template=self.row_template,
            blank=dict.fromkeys(self.inputs, ""),
            extra_rows=range(self.extra),
        )
        if typed is None:
            # Not a list of items the rows can show: edit it as JSON, as posted or stored.
            widget["json_text"] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            widget["rows"] = []
        else:
            widget["json_text"] = None
            widget["rows"] = [
                {"number": number, "cells": cells, "errors": self.row_errors.get(number, [])}
                for number, cells in enumerate(typed, start=1)
            ]
        return context


class NameListWidget(RowsWidget):
    """Model names (or, for aliases, glob patterns), one per row."""

    template_name = "providers/widgets/rows.html"
    row_template = "providers/widgets/name_row.html"
    inputs = ("item",)

    def __init__(self, attrs=None, *, patterns: bool, noun: str, **kwargs):
        super().__init__(attrs, noun=noun, **kwargs)
        self.patterns = patterns

    def rows_read(self, typed):
        return Rows([row["item"].strip() for row in typed], typed=typed, problems=[])

    def item_row(self, item):
        return {"item": item} if isinstance(item, str) else None

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"].update(kind="names", patterns=self.patterns)
        return context


class TransformsWidget(RowsWidget):
    """A provider's request transforms: one operation per row, with the inputs its op takes."""

    template_name = "providers/widgets/rows.html"
    row_template = "providers/widgets/transform_row.html"
    inputs = TRANSFORM_INPUTS
    noun = "transform"

    def rows_read(self, typed):
        items, problems = [], []
        for number, row in enumerate(typed, start=1):
            item, row_problems = transform_from_row(row)
            items.append(item)
            problems.extend((number, f"transform {number}: {problem}") for problem in row_problems)
        return Rows(items, typed=typed, problems=problems)

    def item_row(self, item):
        if not isinstance(item, dict) or not set(item) <= set(TRANSFORM_INPUTS):
            return None
        op = item.get("op", "")
        row = dict.fromkeys(TRANSFORM_INPUTS, "")
        for key, value in item.items():
            if key == "value" and op != "header":
                row[key] = json.dumps(value, ensure_ascii=False)
            elif key == "max" and isinstance(value, int | float) and not isinstance(value, bool):
                row[key] = repr(value) if isinstance(value, float) else str(value)
            elif isinstance(value, str):
                row[key] = value
            else:
                return None
        return row

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        context["widget"].update(
            kind="transforms",
            ops=list(OP_KEYS),
            op_keys=json.dumps(OP_KEYS),
            gateway_headers=json.dumps(sorted(GATEWAY_HEADERS)),
            gateway_fields=json.dumps(sorted(GATEWAY_FIELDS)),
        )
        return context


def transform_from_row(row: dict[str, str]) -> tuple[dict, list[str]]:
    """One transform from its row: only the inputs its op takes (others are ignored); the problems of
    reading them (a max that is no number, a value that is no JSON). Provider.clean judges the rest."""
    op = row["op"].strip()
    keys = OP_KEYS.get(op, tuple(key for key in TRANSFORM_INPUTS if key != "op"))
    item: dict[str, Any] = {"op": op} if op else {}
    problems = []
    for key in keys:
        text = row.get(key, "")
        if key == "value" and op == "header":
            item[key] = text.strip()
            continue
        if not text.strip():
            continue  # missing: the validation names what the op needs
        if key == "max":
            number = text.strip()
            if not NUMBER_RE.fullmatch(number):
                problems.append(f"'max' must be a number, not '{number}'")
                item[key] = 0
            else:
                item[key] = int(number) if _INTEGER_RE.fullmatch(number) else float(number)
        elif key == "value":
            try:
                item[key] = json.loads(text)
            except ValueError:
                problems.append("'value' is not JSON (write text in double quotes, e.g. \"auto\")")
                item[key] = None
        else:
            item[key] = text.strip()
    return item, problems


class RowsJSONField(forms.JSONField):
    """A JSON list edited as rows: posted rows arrive as Rows, a JSON value posted whole as text."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("initial", list)
        super().__init__(**kwargs)

    def rows_problems(self, items: list) -> list[tuple[int, str]]:
        """Problems of the items read from rows, as (row number, message)."""
        return []

    def to_python(self, value):
        if not isinstance(value, Rows):
            return super().to_python(value)
        found = value.problems + self.rows_problems(list(value))
        if found:
            raise ValidationError([message for _, message in sorted(found, key=lambda problem: problem[0])])
        return list(value)

    def bound_data(self, data, initial):
        return data if isinstance(data, Rows) else super().bound_data(data, initial)

    def prepare_value(self, value):
        return value if isinstance(value, Rows) else super().prepare_value(value)


class NameListField(RowsJSONField):
    """Model names, or glob patterns too, one per row (NameListWidget)."""

    def __init__(self, *, patterns: bool, noun: str, **kwargs):
        super().__init__(widget=NameListWidget(patterns=patterns, noun=noun), **kwargs)
        self.patterns = patterns
        self.noun = noun

    def rows_problems(self, items):
        problems = []
        seen: set[str] = set()
        for number, name in enumerate(items, start=1):
            if not self.patterns and is_pattern(name):
                problems.append((number, f"{self.noun} {number}: '{name}' is a pattern; only a model name can go here"))
            elif name in seen:
                problems.append((number, f"{self.noun} {number}: '{name}' is listed twice"))
            seen.add(name)
        return problems


class TransformsField(RowsJSONField):
    """A provider's request transforms, one operation per row (TransformsWidget). The rows' reading problems
    and transforms_problems (what Provider.clean runs) are reported together, by row."""

    def __init__(self, **kwargs):
        super().__init__(widget=TransformsWidget(), **kwargs)

    def rows_problems(self, items):
        # A value that could not be read stands in the item as a valid placeholder, so it is named once.
        return [
            (index or 0, message if index is None else f"transform {index}: {message}")
            for index, message in transforms_problems(items)
        ]


class KindsField(forms.MultipleChoiceField):
    """A model's kinds as checkboxes; none checked means a chat model."""

    widget = forms.CheckboxSelectMultiple

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault("initial", model_kinds_default)
        super().__init__(choices=[(kind, kind) for kind in MODEL_KINDS], **kwargs)

    def to_python(self, value):
        # A JSON list posted whole, as the field was once edited.
        if isinstance(value, list) and len(value) == 1 and str(value[0]).lstrip().startswith("["):
            try:
                value = json.loads(value[0])
            except ValueError:
                raise ValidationError(f"kinds must be a list of: {', '.join(MODEL_KINDS)}") from None
        return super().to_python(value)

    def clean(self, value):
        chosen = set(super().clean(value))
        return [kind for kind in MODEL_KINDS if kind in chosen]


def row_errors_of(
    messages, *, rows: list[dict[str, str]], field_name: str, noun: str, own_name: str = ""
) -> dict[int, list[str]]:
    """Which rows a field's error messages are about, so the widget can show each beside its row: messages
    that start "<noun> N:" or "<field>[i]" (0-based), that quote a row's value, or that refuse the model's
    own name. Row 0 = the list as a whole."""
    found: dict[int, list[str]] = {}
    values = [next(iter(row.values()), "").strip() if len(row) == 1 else "" for row in rows]
    for message in messages:
        match = _ROW_PREFIX_RE.match(message)
        if match and match["field"] == field_name:
            numbers = [int(match["index"]) + 1]
        elif match and match["noun"] == noun:
            numbers = [int(match["number"])]
        else:
            named = set(_QUOTED_RE.findall(message))
            if own_name and message.endswith("the model itself"):
                named.add(own_name)
            numbers = [number for number, value in enumerate(values, start=1) if value and value in named]
        numbers = [number for number in numbers if 1 <= number <= len(rows)]
        for number in numbers or [0]:
            found.setdefault(number, []).append(message)
    return found


class StructuredFormMixin:
    """For admin forms using the row widgets: after validation, hand each widget the errors of its rows."""

    def full_clean(self):
        super().full_clean()
        for name, field in self.fields.items():
            widget = field.widget
            if not isinstance(widget, RowsWidget) or name not in self.errors:
                continue
            rows = widget.typed_rows(self[name].value()) or []
            own_name = str(self.data.get("name", "")).strip()
            widget.row_errors = row_errors_of(
                self.errors[name], rows=rows, field_name=name, noun=widget.noun, own_name=own_name
            )
