"""Shape checks a dialect's parse_request makes on a client body before reading it: each refusal is a
400 naming the field, so no wrong type ever reaches the translation as a TypeError."""

from aigateway.errors import bad_request
from providers.dialects.canonical import Tool


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


def tool_checked(raw: dict, where: str, schema_key: str, default_schema: dict | None = None) -> Tool:
    """A tool definition whose name was checked: its description must be a string and its schema (under
    `schema_key`) a JSON object, each when present."""
    description, schema = raw.get("description"), raw.get(schema_key)
    if description is not None and not isinstance(description, str):
        raise bad_request(f"'{where}.description' must be a string", param=f"{where}.description")
    if schema is not None and not isinstance(schema, dict):
        raise bad_request(f"'{where}.{schema_key}' must be a JSON schema object", param=f"{where}.{schema_key}")
    return Tool(name=raw["name"], description=description, parameters=schema or dict(default_schema or {}))
