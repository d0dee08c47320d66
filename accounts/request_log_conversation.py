"""A request log record read back as a conversation, for the viewer: the system prompt, the messages and the
answer, whichever wire format the client spoke (OpenAI chat, Anthropic messages or OpenAI Responses), as the
roles and parts the admin page draws; and as the text messages the playground loads.

The dialects' own parsers read the bodies (those the relay read them with on the way in). A body they refuse (a
part no translation knows, a record cut to fit its cap) is shown item by item as it was stored, so a record
always reads as something.
"""

from dataclasses import dataclass, field

import orjson

from accounts.request_log import request_metadata
from aigateway.errors import GatewayError
from providers.dialects.anthropic import anthropic
from providers.dialects.base import Dialect
from providers.dialects.canonical import (
    ChatRequest,
    ChatResponse,
    Image,
    MalformedValue,
    Text,
    Thinking,
    ToolCall,
    ToolResult,
)
from providers.dialects.openai import openai
from providers.dialects.responses import responses

# The wire format of each endpoint's body. A compare call's body is the OpenAI chat body sent for that model;
# completions and embeddings carry a bare prompt or input.
ENDPOINT_FORMATS = {
    "chat.completions": "openai",
    "compare": "openai",
    "messages": "anthropic",
    "count_tokens": "anthropic",
    "responses": "responses",
    "completions": "prompt",
    "embeddings": "input",
}
FORMAT_NAMES = {
    "openai": "OpenAI chat completions",
    "anthropic": "Anthropic messages",
    "responses": "OpenAI Responses",
    "prompt": "text completion",
    "input": "embeddings input",
}
_DIALECTS: dict[str, Dialect] = {"openai": openai, "anthropic": anthropic, "responses": responses}
# Request fields the conversation does not need read: tools and output formats are shown by name in the
# parameters, and a built-in tool the parsers refuse must not hide the messages.
_NOT_READ = ("tools", "tool_choice", "functions", "function_call", "response_format", "text", "output_format")
# What a parser may raise on a body it does not read (bad_request, a malformed member).
_UNREADABLE = (GatewayError, MalformedValue, ValueError, TypeError, KeyError, AttributeError)


@dataclass
class Part:
    """One piece of a message: `kind` is text, reasoning, image, tool_call, tool_result or data (a stored item
    shown as JSON)."""

    kind: str
    text: str = ""
    name: str = ""
    call_id: str = ""
    is_error: bool = False


@dataclass
class Turn:
    """A message of the conversation: role user, assistant or tool (a user message holding only tool results)."""

    role: str
    parts: list[Part] = field(default_factory=list)


@dataclass
class Conversation:
    format: str
    system: list[str] = field(default_factory=list)
    messages: list[Turn] = field(default_factory=list)
    answer: Turn | None = None
    finish_reason: str = ""
    # The request's parameters without content (tools by name), for the table beside the conversation.
    parameters: dict = field(default_factory=dict)
    # Why the format's parser could not read the request or the answer (they are then shown as stored).
    problems: list[str] = field(default_factory=list)

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES.get(self.format, "unknown format")

    @property
    def has_content(self) -> bool:
        return bool(self.system or self.messages or self.answer)


def request_log_conversation(*, endpoint: str, level: str, body: dict) -> Conversation:
    """The conversation a stored record holds (`body` as accounts.request_log.request_log_body returns it)."""
    request = body.get("request")
    request = request if isinstance(request, dict) else {}
    fmt = ENDPOINT_FORMATS.get(endpoint) or _format_guessed(request)
    if level != "full":
        return Conversation(format=fmt, parameters=request)
    conversation = Conversation(format=fmt, parameters=request_metadata(request))
    names: dict[str, str] = {}
    if fmt in _DIALECTS:
        _request_read(conversation, _DIALECTS[fmt], request, names)
    elif fmt in ("prompt", "input"):
        texts = _texts(request.get(fmt))
        conversation.messages = [Turn("user", [Part("text", text) for text in texts])] if texts else []
    response = body.get("response")
    if isinstance(response, dict) and fmt in _DIALECTS:
        _answer_read(conversation, _DIALECTS[fmt], response, names)
    return conversation


def _format_guessed(request: dict) -> str:
    """The format of a record from an endpoint this module does not know, by the body's shape."""
    if "input" in request and "messages" not in request:
        return "responses"
    return "anthropic" if "system" in request else "openai"


def _request_read(conversation: Conversation, dialect: Dialect, request: dict, names: dict[str, str]) -> None:
    try:
        parsed = dialect.parse_request({k: v for k, v in request.items() if k not in _NOT_READ})
    except _UNREADABLE as exc:
        conversation.problems.append(f"The request could not be read as {conversation.format_name}: {_why(exc)}")
        _request_as_stored(conversation, request)
        return
    conversation.system = [part.text for part in parsed.system if part.text]
    conversation.messages = _turns(parsed, names)


def _turns(parsed: ChatRequest, names: dict[str, str]) -> list[Turn]:
    turns = []
    for message in parsed.messages:
        parts = [_part(part, names) for part in message.parts]
        only_results = bool(parts) and all(part.kind == "tool_result" for part in parts)
        turns.append(Turn("tool" if only_results else message.role, parts))
    return turns


def _part(part, names: dict[str, str]) -> Part:
    """A canonical content part as the viewer shows it; `names` learns each tool call's name by its id, so a
    result says which tool it answers."""
    if isinstance(part, Text):
        return Part("text", part.text)
    if isinstance(part, Thinking):
        return Part("reasoning", part.text)
    if isinstance(part, ToolCall):
        names[part.id] = part.name
        return Part("tool_call", _arguments(part.arguments), name=part.name, call_id=part.id)
    if isinstance(part, ToolResult):
        text = "\n\n".join(_image_label(p) if isinstance(p, Image) else p.text for p in part.content)
        return Part(
            "tool_result",
            text,
            name=names.get(part.tool_call_id, ""),
            call_id=part.tool_call_id,
            is_error=part.is_error,
        )
    if isinstance(part, Image):
        return Part("image", _image_label(part))
    return Part("data", _json(part))


def _image_label(image: Image) -> str:
    # Never drawn: a logged image is named, not fetched or decoded.
    if image.url:
        return image.url
    return f"{image.media_type or 'image'}, {len(image.data or '')} characters of base64 data"


def _arguments(arguments: str) -> str:
    """Tool-call arguments indented for reading, or as written when they are not JSON (a record cut to fit)."""
    try:
        return orjson.dumps(orjson.loads(arguments), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return arguments


def _answer_read(conversation: Conversation, dialect: Dialect, response: dict, names: dict[str, str]) -> None:
    try:
        parsed: ChatResponse = dialect.parse_response(response)
    except _UNREADABLE as exc:
        conversation.problems.append(f"The answer could not be read as {conversation.format_name}: {_why(exc)}")
        conversation.answer = Turn("assistant", [Part("data", _json(response))])
        return
    conversation.answer = Turn("assistant", [_part(part, names) for part in parsed.parts])
    conversation.finish_reason = parsed.finish_reason or ""


def _request_as_stored(conversation: Conversation, request: dict) -> None:
    """Messages as stored, item by item: text where an item has text, JSON where it has something else."""
    for name in ("system", "instructions"):
        conversation.system.extend(_texts(request.get(name)))
    items = request.get("messages", request.get("input"))
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            conversation.messages.append(Turn("user", [Part("data", _json(item))]))
            continue
        role = item.get("role")
        content = item.get("content")
        if role in ("system", "developer"):
            conversation.system.extend(_texts(content))
            continue
        parts = [Part("text", content)] if isinstance(content, str) else []
        for piece in content if isinstance(content, list) else ():
            text = piece.get("text", piece.get("thinking")) if isinstance(piece, dict) else None
            kind = "reasoning" if isinstance(piece, dict) and piece.get("type") == "thinking" else "text"
            parts.append(Part(kind, text) if isinstance(text, str) else Part("data", _json(piece)))
        if content is None or not isinstance(content, str | list):
            parts.append(Part("data", _json(item)))
        conversation.messages.append(Turn(role if role in ("user", "assistant", "tool") else "user", parts))


def _texts(value) -> list[str]:
    """The strings of a prompt, an input or a system field: a string, a list of strings, or text blocks."""
    if isinstance(value, str):
        return [value] if value else []
    texts = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            texts.append(item["text"])
        else:
            texts.append(_json(item))
    return texts


def _json(value) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=repr).decode()
    except TypeError:
        return repr(value)


def _why(exc: Exception) -> str:
    return exc.message if isinstance(exc, GatewayError) else str(exc) or type(exc).__name__


# The playground ---------------------------------------------------------------------------------


def conversation_playground_messages(conversation: Conversation) -> list[dict]:
    """The conversation as the playground sends conversations: OpenAI messages of plain text, user and assistant
    in turn, ending with the answer when there is one. The playground offers no tools, so a tool call or result
    becomes a line of text saying what it was; reasoning stays out, as it does between the playground's turns."""
    messages: list[dict] = []
    turns = [*conversation.messages, *([conversation.answer] if conversation.answer else [])]
    for turn in turns:
        role = "assistant" if turn.role == "assistant" else "user"
        lines = [line for line in (_playground_text(part) for part in turn.parts) if line]
        if not lines:
            continue
        text = "\n\n".join(lines)
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + text
        else:
            messages.append({"role": role, "content": text})
    return messages


def _playground_text(part: Part) -> str:
    if part.kind in ("text", "data"):
        return part.text
    if part.kind == "image":
        return f"[image: {part.text}]"
    if part.kind == "tool_call":
        return f"[tool call {part.name}: {part.text}]"
    if part.kind == "tool_result":
        return f"[tool result{' of ' + part.name if part.name else ''}: {part.text}]"
    return ""


# Parameters the playground's settings take over from a logged request.
PLAYGROUND_PARAMETERS = {
    "temperature": ("temperature",),
    "max_tokens": ("max_tokens", "max_completion_tokens", "max_output_tokens"),
}


def conversation_playground_settings(request: dict) -> dict:
    """Temperature and max tokens of the logged request, where it set them."""
    settings = {}
    for name, fields in PLAYGROUND_PARAMETERS.items():
        for source in fields:
            value = request.get(source)
            if isinstance(value, int | float) and not isinstance(value, bool):
                settings[name] = value
                break
    return settings
