"""Shape checks a dialect's parse_request makes on a client body before reading it: each refusal is a
400 naming the field, so no wrong type ever reaches the translation as a TypeError."""

from aigateway.errors import bad_request


def array_field(body: dict, name: str, where: str | None = None) -> list:
    """An optional array field: [] when absent or null, a 400 naming it when it is anything else."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        where = where or name
        raise bad_request(f"'{where}' must be an array, got {type(value).__name__}", param=where)
    return value


def object_items(body: dict, name: str) -> list[dict]:
    """A required, non-empty array of objects (`messages`, `input`)."""
    items = body.get(name)
    if not isinstance(items, list) or not items:
        raise bad_request(f"'{name}' must be a non-empty array", param=name)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"'{name}[{index}]' must be an object", param=f"{name}[{index}]")
    return items
