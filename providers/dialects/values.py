"""Checks on the values an upstream sends, applied where each one enters a dialect's parser.

A provider's JSON may parse and still hold a count that is a string, a negative number or 10**12, a
list where an object belongs, or an error message that is a number. Each reader here returns the
value in the type the gateway works with, or raises MalformedValue naming the member; nothing of the
wrong type reaches accounting, metrics or a renderer.
"""

from providers.dialects.canonical import TOKEN_COUNT_MAX, MalformedValue

__all__ = [
    "TOKEN_COUNT_MAX",
    "MalformedValue",
    "array_of",
    "index_of",
    "object_of",
    "text_of",
    "token_count",
]


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def token_count(value, where: str) -> int | None:
    """A token count: None when absent (null), a non-negative integer (an integral float such as 12.0 is
    read as 12) as it is, even above TOKEN_COUNT_MAX (UsageReport caps it and says so)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedValue(f"{where} is {_kind(value)}, not a token count")
    if value < 0:
        raise MalformedValue(f"{where} is negative ({value}), not a token count")
    return value


def object_of(value, where: str) -> dict:
    """An optional object: {} when absent (null)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedValue(f"{where} is {_kind(value)}, not an object")
    return value


def array_of(value, where: str) -> list:
    """An optional array: [] when absent (null)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedValue(f"{where} is {_kind(value)}, not an array")
    return value


def text_of(value, where: str) -> str | None:
    """An optional string: None when absent (null)."""
    if value is None or isinstance(value, str):
        return value
    raise MalformedValue(f"{where} is {_kind(value)}, not a string")


def index_of(value, where: str) -> int:
    """A position in a list (a tool call's index): 0 when absent (null)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedValue(f"{where} is {_kind(value)}, not an index")
    return value
