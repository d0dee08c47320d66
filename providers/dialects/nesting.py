"""How deep a client's JSON may nest.

orjson reads up to 1,024 levels but writes at most 254, so a body it accepted could not be sent on.
The gateway accepts JSON_DEPTH_MAX levels: every body it relays, translated or not, then nests less
than the encoder's limit (a translation moves a value at most a few levels deeper).
"""

import orjson

JSON_DEPTH_MAX = 200


def may_nest_deeper(raw: bytes | str, limit: int = JSON_DEPTH_MAX) -> bool:
    """A cheap first look at the raw text: JSON with no more than `limit` brackets cannot nest deeper."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{") > limit
    return raw.count(b"[") + raw.count(b"{") > limit


def too_deep_field(value, limit: int = JSON_DEPTH_MAX) -> str | None:
    """The top-level field of a decoded JSON object (its index, for an array) under which containers nest
    more than `limit` levels deep (counting `value` itself as one), or None when nothing does."""
    if not isinstance(value, dict | list):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    stack = [(child, 2, str(key)) for key, child in items if isinstance(child, dict | list)]
    while stack:
        node, depth, field = stack.pop()
        if depth > limit:
            return field
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1, field) for child in children if isinstance(child, dict | list))
    return None


def json_text_too_deep(text: str, limit: int = JSON_DEPTH_MAX) -> bool:
    """Whether JSON text (tool-call arguments) decodes to containers nested more than `limit` levels deep.
    Text that is not JSON is not too deep: what becomes of it is another rule's business."""
    if not isinstance(text, str) or not may_nest_deeper(text, limit):
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return too_deep_field(value, limit) is not None
