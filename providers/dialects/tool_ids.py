"""Tool-call ids across dialects: each client sees ids in its own format, and its provider gets its own ids back.

The gateway keeps nothing between requests, so the id a client is shown must itself say which id the provider
wrote. Clients get ids of letters, digits, `_` and `-` (all Anthropic accepts; OpenAI clients take them too)
under their own prefix, `toolu_` for Anthropic and `call_` for OpenAI (Chat Completions and Responses):

- a provider's id already in the client's style (`toolu_01A` for an Anthropic client): as it is;
- one in the other family's style (`call_abc` for an Anthropic client, `toolu_01A` for an OpenAI one):
  carried whole after the client's prefix (`toolu_call_abc`, `call_toolu_01A`);
- anything else (`functions.get_weather:0`, `call_0|abc`, a bare `abc123`): the client's prefix, `b64-` and
  the id in unpadded base64url (`toolu_b64-YWJjMTIz`).

Each form reads back to exactly the provider's id (`tool_id_for_provider`). An id the gateway never wrote (the
client made it, or a provider of the client's own format did) goes on as it is, unless the provider refuses
its characters (Anthropic): then it is encoded, the same way for a call and its result.
"""

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, replace

from providers.dialects.canonical import ChatRequest, ToolCall, ToolResult

# What Anthropic accepts as a tool_use id (and as the tool_use_id of a result).
ANTHROPIC_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
ENCODED = "b64-"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class ToolIdStyle:
    prefix: str  # the dialect's own ids start with it
    other: str  # the other family's prefix, carried whole after ours
    # The ids the gateway shows a client of this dialect (and that survive every dialect).
    shown: re.Pattern = ANTHROPIC_TOOL_ID
    # A provider of this dialect refuses ids outside `shown`.
    strict: bool = False


ANTHROPIC_IDS = ToolIdStyle("toolu_", "call_", strict=True)
OPENAI_IDS = ToolIdStyle("call_", "toolu_")
# By dialect name; a door not listed (compare) shows no tool calls and maps nothing.
STYLES = {"anthropic": ANTHROPIC_IDS, "openai": OPENAI_IDS, "responses": OPENAI_IDS}


def _encoded(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()


def _decoded(text: str) -> str | None:
    """The id `text` encodes, None when it is not exactly what _encoded writes."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return value if _encoded(value) == text else None


def tool_id_for_client(value: str | None, style: ToolIdStyle) -> str:
    """A provider's tool-call id as a client of `style` is shown it (see the module's docstring); a missing
    one is made up."""
    if not value:
        return style.prefix + uuid.uuid4().hex[:24]
    if style.shown.fullmatch(value):
        if value.startswith(style.prefix):
            if not value.startswith((style.prefix + style.other, style.prefix + ENCODED)):
                return value
        elif value.startswith(style.other):
            return style.prefix + value
    return style.prefix + ENCODED + _encoded(value)


def tool_id_for_provider(value: str, style: ToolIdStyle) -> str:
    """A tool-call id a client of `style` sent, as the provider wrote it: the inverse of tool_id_for_client;
    an id the gateway did not write is returned as it is."""
    if value.startswith(style.prefix + ENCODED):
        decoded = _decoded(value[len(style.prefix) + len(ENCODED) :])
        if decoded is not None:
            return decoded
    if value.startswith(style.prefix + style.other):
        return value[len(style.prefix) :]
    return value


def _restored(value: str, client: ToolIdStyle, provider: ToolIdStyle | None) -> str:
    restored = tool_id_for_provider(value, client)
    if restored != value or not value or provider is None or not provider.strict or provider.shown.fullmatch(value):
        return restored
    # Not the gateway's: no provider's own id, so it may be encoded for one that refuses it as it is.
    return provider.prefix + ENCODED + _encoded(value)


def tool_ids_restored(request: ChatRequest, *, client: str, provider: str) -> ChatRequest:
    """`request`, read from a client of dialect `client`, with the ids of its tool calls and results as a
    provider of dialect `provider` wrote them (or accepts them). A copy: the request the client sent stays as
    it was (the request log shows that)."""
    style = STYLES.get(client)
    if style is None or not any(
        isinstance(part, ToolCall | ToolResult) for message in request.messages for part in message.parts
    ):
        return request
    target = STYLES.get(provider)
    messages = []
    for message in request.messages:
        parts = []
        for part in message.parts:
            if isinstance(part, ToolCall):
                part = replace(part, id=_restored(part.id, style, target))
            elif isinstance(part, ToolResult):
                part = replace(part, tool_call_id=_restored(part.tool_call_id, style, target))
            parts.append(part)
        messages.append(replace(message, parts=parts))
    return replace(request, messages=messages)
