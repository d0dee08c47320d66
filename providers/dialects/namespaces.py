"""Namespaced tools for providers that have no namespaces.

A Responses client may group function tools in a `namespace` tool (Codex CLI sends `multi_agent_v1` with
`spawn_agent`, `close_agent`, ...), and a call of one names both (`{"namespace": ..., "name": ...}`). A
provider reached through a translation knows only flat function names, so each namespaced tool gets one:
`<namespace>__<name>` when that is a valid tool name no other tool has, else a shortened form with a digest
of both parts. The map from flat names back to (namespace, name) lives in the canonical request, and the
calls the provider makes are given their client's names again before they are rendered.
"""

import hashlib
import re
from dataclasses import replace

from providers.dialects.canonical import StreamEvent, ToolCall, ToolCallDelta

# The tool names every provider accepts (OpenAI's and Anthropic's rule).
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INVALID = re.compile(r"[^A-Za-z0-9_-]")
_DIGEST_LENGTH = 8


def flat_name(namespace: str, name: str, taken: set[str]) -> str:
    """The provider-side name of `name` in `namespace`: not in `taken`, matching TOOL_NAME, and the same for
    the same inputs (a call in the history finds the name its tool was given)."""
    plain = _INVALID.sub("_", f"{namespace}__{name}")
    if TOOL_NAME.match(plain) and plain not in taken:
        return plain
    digest = hashlib.sha256(f"{namespace}\0{name}".encode()).hexdigest()
    for length in range(_DIGEST_LENGTH, len(digest) + 1):
        suffix = "_" + digest[:length]
        candidate = plain[: 64 - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free tool name for {namespace}.{name}")  # 2^256 names taken: cannot happen


def client_names(events: list[StreamEvent], namespaced: dict[str, tuple[str, str]]) -> list[StreamEvent]:
    """The events with each call of a namespaced tool under its client's namespace and name."""
    out = []
    for event in events:
        if isinstance(event, ToolCallDelta) and event.name in namespaced:
            namespace, name = namespaced[event.name]
            event = replace(event, name=name, namespace=namespace)
        out.append(event)
    return out


def client_parts(parts: list, namespaced: dict[str, tuple[str, str]]) -> list:
    """A complete answer's parts with each call of a namespaced tool under its client's namespace and name."""
    out = []
    for part in parts:
        if isinstance(part, ToolCall) and part.name in namespaced:
            namespace, name = namespaced[part.name]
            part = replace(part, name=name, namespace=namespace)
        out.append(part)
    return out
