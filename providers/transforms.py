"""Per-provider request transforms: an ordered list of small edits to the JSON body and the headers
the gateway sends upstream, for providers that reject, need or limit particular fields.

Rules are stored as JSON on the provider and checked where they are written (admin form, YAML
import). The route table compiles them once into frozen `Transform`s; a request only walks them.

    {"op": "drop", "path": "metadata.user_id"}                 remove a field if present
    {"op": "default", "path": "temperature", "value": 0.7}     set a field only when it is absent
    {"op": "force", "path": "stream_options.include_usage", "value": true}   always set a field
    {"op": "cap", "path": "max_tokens", "max": 8192}           lower a number above `max`
    {"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"}   move a field
    {"op": "header", "name": "HTTP-Referer", "value": "https://example.com"}  add or replace a header

A path is dotted field names into nested objects (no list indexes). Missing objects on the way are
created by `default` and `force`; a path that runs through anything but an object is skipped.
"""

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# What each op takes besides "op".
OP_KEYS: dict[str, tuple[str, ...]] = {
    "drop": ("path",),
    "default": ("path", "value"),
    "force": ("path", "value"),
    "cap": ("path", "max"),
    "rename": ("path", "to"),
    "header": ("name", "value"),
}
# The gateway owns these: credentials, framing, and the fields the relay itself relies on.
GATEWAY_HEADERS = frozenset({"authorization", "x-api-key", "host", "content-length", "transfer-encoding"})
GATEWAY_FIELDS = frozenset({"model", "stream"})

HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Header values go out as ASCII; anything else would fail inside the HTTP client mid-request.
HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e]*")
# The serializer the relay uses handles 64-bit integers and nothing larger.
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1
JSON_MAX_DEPTH = 32


class TransformsInvalid(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _FrozenObject(tuple):
    """A JSON object as (key, value) pairs, so a compiled value is immutable and hashable."""


@dataclass(frozen=True, slots=True)
class Transform:
    op: str
    path: tuple[str, ...] = ()
    to: tuple[str, ...] = ()
    # default/force: the frozen JSON value; header: the header value, which may be a credential.
    value: Any = field(default=None, repr=False)
    limit: int | float = 0
    header: str = ""

    def describe(self) -> str:
        """For logs: field paths and header names only, never values."""
        path = ".".join(self.path)
        match self.op:
            case "cap":
                return f"cap {path} at {self.limit}"
            case "rename":
                return f"rename {path} to {'.'.join(self.to)}"
            case "header":
                return f"header {self.header}"
        return f"{self.op} {path}"


# Validation


def transforms_problems(raw: Any) -> list[tuple[int | None, str]]:
    """Every problem as (1-based index of the transform, or None for the list itself, message)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        return [(None, f"request transforms must be a list, not {type_name(raw)}")]
    problems: list[tuple[int | None, str]] = []
    for index, item in enumerate(raw, start=1):
        problems.extend((index, message) for message in _transform_problems(item))
    return problems


def transforms_validate(raw: Any) -> list[str]:
    """Every problem in a list of raw transforms, each naming its transform and field; [] when valid."""
    problems = transforms_problems(raw)
    return [message if index is None else f"transform {index}: {message}" for index, message in problems]


def _transform_problems(item: Any) -> list[str]:
    if not isinstance(item, dict):
        return [f"must be an object with an 'op', not {type_name(item)}"]
    op = item.get("op")
    if "op" not in item:
        return [f"needs an 'op', one of: {', '.join(OP_KEYS)}"]
    if not isinstance(op, str) or op not in OP_KEYS:
        return [f"unknown op {shown(op)}; expected one of: {', '.join(OP_KEYS)}"]
    takes = OP_KEYS[op]
    problems = []
    extra = sorted(str(key) for key in item if key != "op" and key not in takes)
    if extra:
        listed = ", ".join(f"'{key}'" for key in extra)
        problems.append(f"'{op}' does not take {listed} (it takes: {', '.join(takes)})")
    for key in takes:
        problem = _field_problem(op, key, item)
        if problem:
            problems.append(problem)
    return problems


def _field_problem(op: str, key: str, item: dict) -> str | None:
    if op == "header":
        what = "a header 'name'" if key == "name" else "a string 'value'"
    elif key in ("path", "to"):
        what = f"a dotted field '{key}'"
    elif key == "max":
        what = "a numeric 'max'"
    else:
        what = "a JSON 'value'"
    if key not in item:
        return f"'{op}' needs {what}"
    value = item[key]
    if op == "header" or key in ("path", "to"):
        if not isinstance(value, str):
            return f"'{op}' needs {what}, not {type_name(value)}"
        return _header_problem(key, value) if op == "header" else _path_problem(op, key, value, item)
    if key == "max" and not _is_number(value):
        return f"'{op}' needs {what}, not {type_name(value)}"
    return _json_problem(value, key)


def _path_problem(op: str, key: str, path: str, item: dict) -> str | None:
    if not path:
        return f"'{key}' must not be empty"
    if any(not part for part in path.split(".")):
        return f"'{key}' {shown(path)} has an empty field name (check the dots)"
    if not _utf8(path):
        return f"'{key}' is not valid text"
    if path.split(".")[0] in GATEWAY_FIELDS:
        return f"'{key}' {shown(path)} is set by the gateway and cannot be changed by a transform"
    if key == "to" and path == item.get("path"):
        return f"'{op}' needs a 'to' that differs from 'path'"
    return None


def _header_problem(key: str, value: str) -> str | None:
    if key == "name":
        if not HEADER_NAME_RE.fullmatch(value):
            return f"{shown(value)} is not a valid header name"
        if value.lower() in GATEWAY_HEADERS:
            return f"header {shown(value)} is set by the gateway and cannot be overridden"
        return None
    if not HEADER_VALUE_RE.fullmatch(value):
        return "header 'value' must be printable ASCII on one line"
    return None


def _json_problem(value: Any, key: str, depth: int = 0) -> str | None:
    if depth > JSON_MAX_DEPTH:
        return f"'{key}' is nested more than {JSON_MAX_DEPTH} levels deep"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not JSON_INT_MIN <= value <= JSON_INT_MAX:
            return f"'{key}' holds an integer too large for JSON"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"'{key}' must be a finite number"
    if isinstance(value, str):
        return None if _utf8(value) else f"'{key}' holds text that is not valid"
    if isinstance(value, list):
        for element in value:
            problem = _json_problem(element, key, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for name, element in value.items():
            if not isinstance(name, str) or not _utf8(name):
                return f"'{key}' holds an object whose keys are not all text"
            problem = _json_problem(element, key, depth + 1)
            if problem:
                return problem
        return None
    return f"'{key}' must be a JSON value, not {type_name(value)}"


# Compiling


def transforms_compile(raw: Any) -> tuple[Transform, ...]:
    """Raw transforms as stored on a provider -> what a request applies; raises TransformsInvalid."""
    problems = transforms_validate(raw)
    if problems:
        raise TransformsInvalid(problems)
    compiled = []
    for item in raw or ():
        op = item["op"]
        if op == "header":
            compiled.append(Transform(op=op, header=item["name"], value=item["value"]))
            continue
        compiled.append(
            Transform(
                op=op,
                path=tuple(item["path"].split(".")),
                to=tuple(item["to"].split(".")) if op == "rename" else (),
                value=_freeze(item.get("value")),
                limit=item.get("max", 0),
            )
        )
    return tuple(compiled)


def transforms_describe(transforms: Iterable[Transform]) -> str:
    return ", ".join(transform.describe() for transform in transforms)


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return _FrozenObject((key, _freeze(element)) for key, element in value.items())
    if isinstance(value, list):
        return tuple(_freeze(element) for element in value)
    return value


def _thaw(value: Any) -> Any:
    # A fresh object per request: a value placed in one body must not be shared with the next.
    if isinstance(value, _FrozenObject):
        return {key: _thaw(element) for key, element in value}
    if isinstance(value, tuple):
        return [_thaw(element) for element in value]
    return value


# Applying


def transforms_apply(transforms: Iterable[Transform], body: dict, headers: dict) -> tuple[dict, dict]:
    """The body and headers with every transform applied in order; the arguments are not changed."""
    transforms = tuple(transforms)
    return transforms_apply_body(transforms, body), transforms_apply_headers(transforms, headers)


def transforms_apply_body(transforms: Iterable[Transform], body: dict) -> dict:
    out = dict(body)
    # Objects this call created or copied, by id (kept alive here so an id is never reused):
    # only these may be changed in place, the rest may be shared with the client's own body.
    owned: dict[int, dict] = {id(out): out}
    for transform in transforms:
        match transform.op:
            case "drop":
                found = _find(out, transform.path)
                if found is not None and transform.path[-1] in found:
                    del _writable(out, transform.path, owned, create=False)[transform.path[-1]]
            case "default":
                found = _find(out, transform.path)
                if found is None or transform.path[-1] not in found:
                    target = _writable(out, transform.path, owned, create=True)
                    if target is not None and transform.path[-1] not in target:
                        target[transform.path[-1]] = _thaw(transform.value)
            case "force":
                target = _writable(out, transform.path, owned, create=True)
                if target is not None:
                    target[transform.path[-1]] = _thaw(transform.value)
            case "cap":
                found = _find(out, transform.path)
                current = found.get(transform.path[-1]) if found is not None else None
                if _is_number(current) and current > transform.limit:
                    _writable(out, transform.path, owned, create=False)[transform.path[-1]] = transform.limit
            case "rename":
                _rename(out, transform.path, transform.to, owned)
    return out


def transforms_apply_headers(transforms: Iterable[Transform], headers: dict) -> dict:
    out = dict(headers)
    for transform in transforms:
        if transform.op == "header":
            # HTTP header names are case-insensitive: replace whatever spelling is already there.
            lowered = transform.header.lower()
            for name in [name for name in out if name.lower() == lowered]:
                del out[name]
            out[transform.header] = transform.value
    return out


def _find(root: dict, path: tuple[str, ...]) -> dict | None:
    """The object holding the path's last field, read-only; None when the way there is missing or blocked."""
    node = root
    for key in path[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return None
    return node


def _writable(root: dict, path: tuple[str, ...], owned: dict[int, dict], *, create: bool) -> dict | None:
    """The object holding the path's last field, copied on the way so the caller's objects stay as they were."""
    node = root
    for key in path[:-1]:
        if key in node:
            child = node[key]
            if not isinstance(child, dict):
                return None
            if id(child) not in owned:
                child = dict(child)
        elif create:
            child = {}
        else:
            return None
        owned[id(child)] = child
        node[key] = child
        node = child
    return node


def _rename(root: dict, source: tuple[str, ...], target: tuple[str, ...], owned: dict[int, dict]) -> None:
    found = _find(root, source)
    if found is None or source[-1] not in found:
        return
    holder = _writable(root, source, owned, create=False)
    value = holder.pop(source[-1])
    destination = _writable(root, target, owned, create=True)
    if destination is None:
        # The target runs through a non-object: leave the field where it was.
        holder[source[-1]] = value
        return
    destination[target[-1]] = value


# Helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def type_name(value: Any, *, yaml: bool = False) -> str:
    """How error messages name a value's type: JSON words, or YAML's (mapping, integer) for the import."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if yaml and isinstance(value, int):
        return "an integer"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping" if yaml else "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def shown(value: Any) -> str:
    """A value quoted for an error message, cut to a readable length."""
    text = str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"'{text}'"
