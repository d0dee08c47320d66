"""Anthropic Messages wire format."""

import uuid

import orjson

from aigateway.errors import GatewayError, bad_request
from providers.dialects import register
from providers.dialects.base import Dialect, StreamParser, StreamPassthrough, StreamRenderer
from providers.dialects.canonical import (
    EFFORT_BUDGETS,
    ChatRequest,
    ChatResponse,
    End,
    Finish,
    Image,
    MalformedEvent,
    Message,
    Part,
    Start,
    StreamError,
    StreamEvent,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResult,
    Usage,
    UsageReport,
    budget_for,
    id_in_style,
)
from providers.dialects.checks import array_field, object_items, tool_checked
from providers.dialects.nesting import json_text_too_deep
from providers.dialects.sse import data_verbatim, sse_encode
from providers.dialects.tool_ids import ANTHROPIC_IDS, tool_id_for_client
from providers.dialects.values import array_of, object_of, text_of, token_count
from providers.redaction import upstream_message_redact

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic requires max_tokens; a client of another dialect may leave it out.
DEFAULT_MAX_TOKENS = 4096
BUDGET_MAX = 2**31 - 1

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_FINISH_IN = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_OUT = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_CHOICE_IN = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}
_CHOICE_OUT = {"auto": "auto", "required": "any", "tool": "tool", "none": "none"}
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def _new_id(prefix: str = "msg_") -> str:
    return prefix + uuid.uuid4().hex[:24]


def _stop_reason(finish: str | None, stop_sequence: str | None) -> str:
    if finish == "stop" and stop_sequence:
        return "stop_sequence"
    return _STOP_OUT.get(finish or "stop", "end_turn")


def _json_object(arguments: str) -> dict:
    """Tool-call arguments as the object Anthropic wants; a model's broken (or absurdly nested) JSON becomes {}."""
    if json_text_too_deep(arguments):
        return {}
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class _PromptCount:
    """Anthropic splits the prompt into uncached input, cache reads and cache writes; counts are
    cumulative and a later event may leave some out, so the last known value of each is kept."""

    __slots__ = ("input", "cache_read", "cache_write")

    def __init__(self) -> None:
        self.input = self.cache_read = self.cache_write = None

    def update(self, usage: dict) -> bool:
        seen = False
        for attr, name in (
            ("input", "input_tokens"),
            ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_creation_input_tokens"),
        ):
            value = token_count(usage.get(name), f"usage.{name}")
            if value is not None:
                setattr(self, attr, value)
                seen = True
        return seen

    def usage(self, completion: int | None) -> UsageReport:
        """The canonical count: prompt_tokens is the whole prompt, cache reads and writes included.
        Anthropic reports no reasoning count apart (thinking is part of output_tokens)."""
        prompt = (self.input or 0) + (self.cache_read or 0) + (self.cache_write or 0)
        return UsageReport(prompt, completion, self.cache_read or 0, cache_write_tokens=self.cache_write)


def _usage(raw) -> Usage | None:
    """A reply's usage; None when there is none, MalformedValue when it is not an object of token counts."""
    if raw is None:
        return None
    raw = object_of(raw, "usage")
    prompt = _PromptCount()
    prompt.update(raw)
    return prompt.usage(token_count(raw.get("output_tokens"), "usage.output_tokens") or 0).usage()


def _finish_in(reason, where: str) -> str | None:
    reason = text_of(reason, where)
    return _FINISH_IN.get(reason, "stop") if reason else None


def upstream_error_text(payload) -> str | None:
    """The message of an Anthropic error body ({"type": "error", "error": {"type", "message"}}) when it
    is text, with every credential in it redacted; None otherwise."""
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return upstream_message_redact(message) if isinstance(message, str) and message else None


def _prompt_fields(prompt: int, cached: int, written: int) -> dict:
    """The canonical prompt count in Anthropic's terms: input_tokens excludes cache reads and writes."""
    fields = {"input_tokens": max(prompt - cached - written, 0)}
    if cached:
        fields["cache_read_input_tokens"] = cached
    if written:
        fields["cache_creation_input_tokens"] = written
    return fields


def _usage_body(usage: Usage | None) -> dict:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    body = _prompt_fields(usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens)
    body["output_tokens"] = usage.completion_tokens
    return body


# Client request -> canonical --------------------------------------------------------------------


def _image_in(block: dict, where: str) -> Image:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        return Image(data=source["data"], media_type=source.get("media_type") or "image/png")
    if kind == "url" and isinstance(source.get("url"), str):
        return Image(url=source["url"])
    raise bad_request(
        f"'{where}.source' must be a base64 or url image source; {kind!r} is not accepted by this model's provider",
        param=f"{where}.source",
    )


def _blocks_in(content, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    parts: list[Part] = []
    for index, block in enumerate(content or ()):
        here = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(Text(block["text"]))
        elif kind == "image":
            parts.append(_image_in(block, here))
        elif kind == "tool_use" and isinstance(block.get("name"), str):
            arguments = orjson.dumps(block.get("input") or {}).decode()
            parts.append(ToolCall(str(block.get("id") or ""), block["name"], arguments))
        elif kind == "tool_result":
            result = block.get("content")
            if result is not None and not isinstance(result, str | list):
                raise bad_request(
                    f"'{here}.content' must be a string or an array of content blocks", param=f"{here}.content"
                )
            content_parts = [p for p in _blocks_in(result, here) if isinstance(p, Text | Image)]
            parts.append(ToolResult(str(block.get("tool_use_id") or ""), content_parts, bool(block.get("is_error"))))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            parts.append(Thinking(block["thinking"], block.get("signature")))
        elif kind == "redacted_thinking":
            continue  # encrypted for Anthropic only; no other provider can read it
        else:
            raise bad_request(
                f"'{here}' is a {kind or 'malformed'!r} content block, which this model's provider does not accept",
                param=here,
            )
    return parts


def _reasoning_in(body: dict, request: ChatRequest) -> None:
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        # Bounded so that the token sizes built from it stay integers every encoder can write.
        if isinstance(budget, bool) or not isinstance(budget, int) or not 0 < budget <= BUDGET_MAX:
            raise bad_request(
                f"'thinking.budget_tokens' must be an integer from 1 to {BUDGET_MAX}", param="thinking.budget_tokens"
            )
        request.thinking_budget = budget
    elif kind == "adaptive":
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        request.reasoning_effort = effort if isinstance(effort, str) and effort in EFFORT_BUDGETS else "medium"


def _system_in(content, where: str) -> list[Text]:
    parts = _blocks_in(content, where)
    if any(not isinstance(part, Text) for part in parts):
        raise bad_request(f"'{where}' may hold only text blocks when translated for this model's provider", param=where)
    return parts


def _server_tool(raw) -> bool:
    """A tool Anthropic runs itself: a versioned type (`web_search_20250305`, `bash_20250124`) and no schema."""
    return (
        isinstance(raw, dict)
        and isinstance(raw.get("type"), str)
        and raw["type"] != "custom"
        and "input_schema" not in raw
    )


def _tool_in(raw, where: str) -> Tool:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise bad_request(f"'{where}' must be a tool with a name", param=where)
    if "input_schema" not in raw:
        raise bad_request(
            f"'{where}' is a {raw.get('type')!r} server tool, which this model's provider does not offer", param=where
        )
    return tool_checked(raw, where, "input_schema")


def _tool_choice_in(choice) -> ToolChoice | None:
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not isinstance(kind, str) or kind not in _CHOICE_IN:
        raise bad_request(
            "'tool_choice' must be an object whose 'type' is auto, any, tool or none", param="tool_choice.type"
        )
    name = choice.get("name")
    if kind == "tool" and not isinstance(name, str):
        raise bad_request("'tool_choice.name' must name the tool to use", param="tool_choice.name")
    return ToolChoice(_CHOICE_IN[kind], name if kind == "tool" else None)


# Canonical -> upstream request ------------------------------------------------------------------


def _image_out(image: Image) -> dict:
    if image.url:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    source = {"type": "base64", "media_type": image.media_type or "image/png", "data": image.data or ""}
    return {"type": "image", "source": source}


def _block_out(part: Part) -> dict | None:
    if isinstance(part, Text):
        # Anthropic rejects empty text blocks.
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, Image):
        return _image_out(part)
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": _json_object(part.arguments)}
    if isinstance(part, ToolResult):
        texts = [p.text for p in part.content if isinstance(p, Text)]
        if len(texts) == len(part.content):
            content = "".join(texts)
        else:
            content = [{"type": "text", "text": p.text} if isinstance(p, Text) else _image_out(p) for p in part.content]
        block = {"type": "tool_result", "tool_use_id": part.tool_call_id, "content": content}
        if part.is_error:
            block["is_error"] = True
        return block
    if isinstance(part, Thinking) and part.signature:
        # Without Anthropic's signature a thinking block would be refused; it is only context anyway.
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    return None


def _messages_out(messages: list[Message]) -> list[dict]:
    """Anthropic wants strictly alternating roles: consecutive messages of one role are merged."""
    out: list[dict] = []
    for message in messages:
        blocks = [block for block in map(_block_out, message.parts) if block is not None]
        if not blocks:
            continue
        if out and out[-1]["role"] == message.role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": message.role, "content": blocks})
    for message in out:
        content = message["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            message["content"] = content[0]["text"]
    return out


# Stream parsing, rendering and pass-through -----------------------------------------------------


class AnthropicStreamParser(StreamParser):
    def __init__(self) -> None:
        self.prompt = _PromptCount()
        # content block index -> tool call ordinal
        self.tool_calls: dict[int, int] = {}

    def feed(self, name: str | None, data: str) -> tuple[dict | None, list[StreamEvent]]:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedEvent("upstream event is not JSON") from None
        if not isinstance(payload, dict):
            raise MalformedEvent("upstream event is not a JSON object")
        kind = payload.get("type") or name
        events: list[StreamEvent] = []
        if kind == "content_block_delta":
            delta = object_of(payload.get("delta"), "delta")
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                events.append(TextDelta(text_of(delta.get("text"), "delta.text") or ""))
            elif delta_type == "input_json_delta":
                ordinal = self.tool_calls.get(_block_index(payload), 0)
                arguments = text_of(delta.get("partial_json"), "delta.partial_json") or ""
                events.append(ToolCallDelta(ordinal, arguments=arguments))
            elif delta_type == "thinking_delta":
                events.append(ThinkingDelta(text_of(delta.get("thinking"), "delta.thinking") or ""))
            elif delta_type == "signature_delta":
                events.append(ThinkingDelta(signature=text_of(delta.get("signature"), "delta.signature")))
        elif kind == "message_start":
            message = object_of(payload.get("message"), "message")
            message_id = message.get("id")
            events.append(Start(message_id if isinstance(message_id, str) else ""))
            usage = message.get("usage")
            # message_start's output_tokens is a placeholder; the real count comes in message_delta.
            if usage is not None and self.prompt.update(object_of(usage, "message.usage")):
                events.append(self.prompt.usage(None))
        elif kind == "content_block_start":
            block = object_of(payload.get("content_block"), "content_block")
            block_type = block.get("type")
            if block_type == "text" and text_of(block.get("text"), "content_block.text"):
                events.append(TextDelta(block["text"]))
            elif block_type == "thinking" and text_of(block.get("thinking"), "content_block.thinking"):
                events.append(ThinkingDelta(block["thinking"]))
            elif block_type == "tool_use":
                ordinal = self.tool_calls[_block_index(payload)] = len(self.tool_calls)
                arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
                events.append(
                    ToolCallDelta(
                        ordinal,
                        text_of(block.get("id"), "content_block.id") or "",
                        text_of(block.get("name"), "content_block.name") or "",
                        arguments,
                    )
                )
        elif kind == "message_delta":
            delta = object_of(payload.get("delta"), "delta")
            reason = _finish_in(delta.get("stop_reason"), "delta.stop_reason")
            if reason:
                events.append(Finish(reason, text_of(delta.get("stop_sequence"), "delta.stop_sequence")))
            usage = payload.get("usage")
            if usage is not None:
                usage = object_of(usage, "usage")
                self.prompt.update(usage)
                events.append(self.prompt.usage(token_count(usage.get("output_tokens"), "usage.output_tokens")))
        elif kind == "message_stop":
            events.append(End())
        elif kind == "error":
            error = payload.get("error")
            error_type = error.get("type") if isinstance(error, dict) else None
            message = upstream_error_text(payload) or "upstream error"
            events.append(StreamError(message, error_type if isinstance(error_type, str) else None))
        return payload, events


def _block_index(payload: dict):
    """A content block's index, as a key of the parser's tool calls (any JSON scalar; a list would not hash)."""
    index = payload.get("index")
    return index if isinstance(index, int | str) else None


class AnthropicStreamRenderer(StreamRenderer):
    """Canonical events -> the Messages event sequence: message_start, content blocks (start, deltas,
    stop), message_delta with the stop reason and usage, message_stop."""

    def __init__(self, *, model: str, prompt_estimate: int | None = None) -> None:
        self.model = model
        # message_start carries input_tokens; a provider that reports usage only at the end gets the
        # gateway's estimate there, corrected in message_delta.
        self.prompt_estimate = prompt_estimate or 0
        self.id = ""
        self.started = False
        self.errored = False
        self.block = -1  # index of the newest content block
        self.open: str | None = None  # "text", "thinking" or "tool:<n>" while a block is open
        self.tool_blocks: dict[int, int] = {}
        self.finish: str | None = None
        self.stop_sequence: str | None = None
        self.usage = UsageReport()
        self.delta_sent = False

    @staticmethod
    def _event(payload: dict) -> bytes:
        return sse_encode(orjson.dumps(payload), event=payload["type"])

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        prompt = self.usage.prompt_tokens if self.usage.prompt_tokens is not None else self.prompt_estimate
        usage = _prompt_fields(prompt, self.usage.cached_tokens or 0, self.usage.cache_write_tokens or 0)
        usage["output_tokens"] = 0
        message = {
            "id": self.id or _new_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return [self._event({"type": "message_start", "message": message})]

    def _close_block(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._event({"type": "content_block_stop", "index": self.block})]

    def _open_block(self, kind: str, block: dict) -> list[bytes]:
        out = self._start() + self._close_block()
        self.block += 1
        self.open = kind
        out.append(self._event({"type": "content_block_start", "index": self.block, "content_block": block}))
        return out

    def _delta(self, index: int, delta: dict) -> bytes:
        return self._event({"type": "content_block_delta", "index": index, "delta": delta})

    def _message_delta(self) -> bytes:
        self.delta_sent = True
        usage: dict = {"output_tokens": self.usage.completion_tokens or 0}
        if self.usage.prompt_tokens is not None:
            usage.update(
                _prompt_fields(
                    self.usage.prompt_tokens, self.usage.cached_tokens or 0, self.usage.cache_write_tokens or 0
                )
            )
        if self.usage.estimated:
            usage["estimated"] = True
        delta = {"stop_reason": _stop_reason(self.finish, self.stop_sequence), "stop_sequence": self.stop_sequence}
        return self._event({"type": "message_delta", "delta": delta, "usage": usage})

    def render(self, event: StreamEvent) -> list[bytes]:
        match event:
            case Start(id=message_id):
                self.id = self.id or id_in_style(message_id, "msg_", "chatcmpl-")
                return self._start()
            case TextDelta(text=text) if text:
                out = [] if self.open == "text" else self._open_block("text", {"type": "text", "text": ""})
                out.append(self._delta(self.block, {"type": "text_delta", "text": text}))
                return out
            case ThinkingDelta(text=text, signature=signature):
                out = []
                if text:
                    if self.open != "thinking":
                        out = self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                    out.append(self._delta(self.block, {"type": "thinking_delta", "thinking": text}))
                if signature and self.open == "thinking":
                    out.append(self._delta(self.block, {"type": "signature_delta", "signature": signature}))
                return out
            case ToolCallDelta(index=index):
                out = []
                if index not in self.tool_blocks:
                    block = {
                        "type": "tool_use",
                        "id": tool_id_for_client(event.id, ANTHROPIC_IDS),
                        "name": event.name or "",
                        "input": {},
                    }
                    out = self._open_block(f"tool:{index}", block)
                    self.tool_blocks[index] = self.block
                if event.arguments:
                    delta = {"type": "input_json_delta", "partial_json": event.arguments}
                    out.append(self._delta(self.tool_blocks[index], delta))
                return out
            case Finish(reason=reason, stop_sequence=stop_sequence):
                self.finish, self.stop_sequence = reason, stop_sequence
                return self._start() + self._close_block()
            case UsageReport():
                self.usage.merge(event)
                # The provider's final count after the finish: the stop reason and usage go out now.
                if self.finish is not None and not self.delta_sent and event.completion_tokens is not None:
                    return [self._message_delta()]
                return []
            case StreamError(message=message):
                self.errored = True
                error = GatewayError(502, "upstream_stream_error", f"upstream failed mid-stream: {message}")
                return [anthropic.stream_error_event(error)]
        return []

    def close(self) -> list[bytes]:
        if self.errored:
            return []
        out = self._start() + self._close_block()
        if not self.delta_sent:
            out.append(self._message_delta())
        out.append(self._event({"type": "message_stop"}))
        return out


class AnthropicPassthrough(StreamPassthrough):
    def __init__(self, *, model: str) -> None:
        self.model = model

    def forward(self, name: str | None, payload: dict | None, data: str | None = None) -> bytes | None:
        if payload is None:
            return None
        kind = payload.get("type")
        verbatim = data_verbatim(data)
        # A provider that counts nothing: the client still gets usage, the gateway's count.
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            message = payload["message"]
            message["model"] = self.model
            if not message.get("usage") and self.estimate is not None:
                message["usage"] = self._estimated_usage()
            verbatim = False  # once per stream: re-encoded
        elif kind == "message_delta" and not payload.get("usage") and self.estimate is not None:
            payload["usage"] = self._estimated_usage()
            verbatim = False
        return sse_encode(data.encode() if verbatim else orjson.dumps(payload), event=name or kind)

    def _estimated_usage(self) -> dict:
        usage = self.estimate()
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens, "estimated": True}

    def close(self) -> list[bytes]:
        return []  # message_stop came from the provider


class AnthropicDialect(Dialect):
    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        headers.update(extra_headers)
        return headers

    def error_body(self, error: GatewayError) -> dict:
        # A client mistake without a type of its own (405, 409, 422, ...) is still a request error.
        error_type = _ERROR_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
        return {"type": "error", "error": {"type": error_type, "message": error.message}}

    def stream_error_event(self, error: GatewayError) -> bytes:
        return sse_encode(orjson.dumps(self.error_body(error)), event="error")

    def upstream_error_message(self, payload) -> str | None:
        return upstream_error_text(payload)

    # Same-dialect relay -------------------------------------------------------------------------

    def prepare_chat(self, body: dict, *, upstream_model: str, stream: bool, max_output_tokens: int | None) -> dict:
        """The client's body, passed through with our model name and the tier's output cap."""
        out = dict(body)
        out["model"] = upstream_model
        max_tokens = out.get("max_tokens")
        if max_output_tokens is not None and isinstance(max_tokens, int) and max_tokens > max_output_tokens:
            out["max_tokens"] = max_output_tokens
        return out

    def stream_passthrough(self, *, model: str, include_usage: bool) -> AnthropicPassthrough:
        return AnthropicPassthrough(model=model)

    def response_usage(self, data: dict) -> Usage | None:
        return _usage(data.get("usage"))

    def response_text(self, data: dict) -> str:
        return self.parse_response(data).text()

    # Facing a client ----------------------------------------------------------------------------

    def parse_request(self, body: dict) -> ChatRequest:
        """A checked /v1/messages body -> canonical; Anthropic-only fields (top_k, thinking, ...) are left out."""
        request = ChatRequest(messages=[])
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise bad_request("'system' must be a string or an array of text blocks", param="system")
        request.system = _system_in(system, "system") if system else []
        for index, message in enumerate(object_items(body, "messages")):
            where = f"messages[{index}]"
            content = message.get("content")
            if not isinstance(content, str | list):
                raise bad_request(f"'{where}.content' must be a string or an array of content blocks", param=where)
            role = message.get("role")
            if role == "system":
                # System text inside the conversation: the other side gets it as system text.
                request.system.extend(_system_in(content, where))
            elif role in ("user", "assistant"):
                request.messages.append(Message(role, _blocks_in(content, where)))
            else:
                raise bad_request(
                    f"'{where}.role' is {role!r}, which cannot be translated for this model's provider "
                    "(user, assistant or system)",
                    param=f"{where}.role",
                )
        max_tokens = body.get("max_tokens")
        request.max_tokens = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(request, name, value)
        request.stop = array_field(body, "stop_sequences")
        if not all(isinstance(sequence, str) for sequence in request.stop):
            raise bad_request("'stop_sequences' must be an array of strings", param="stop_sequences")
        request.stream = bool(body.get("stream"))
        for index, raw in enumerate(array_field(body, "tools")):
            if _server_tool(raw):
                # Anthropic's own tools (web_search_..., code_execution_...): dropped or refused by the relay.
                request.builtin_tools.append((f"tools[{index}]", raw["type"]))
            else:
                request.tools.append(_tool_in(raw, f"tools[{index}]"))
        choice = body.get("tool_choice")
        request.tool_choice = _tool_choice_in(choice)
        if request.tool_choice is not None and choice.get("disable_parallel_tool_use") is True:
            request.parallel_tool_calls = False
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
            request.user = metadata["user_id"]
        _reasoning_in(body, request)
        output_format = body.get("output_format")
        if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
            request.output_format = {"type": "json_schema", "schema": output_format.get("schema") or {}}
        return request

    def render_response(self, response: ChatResponse, *, model: str) -> dict:
        content = []
        for part in response.parts:
            if isinstance(part, Thinking):
                content.append({"type": "thinking", "thinking": part.text, "signature": part.signature or ""})
            elif isinstance(part, Text):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ToolCall):
                tool_id = tool_id_for_client(part.id, ANTHROPIC_IDS)
                content.append(
                    {"type": "tool_use", "id": tool_id, "name": part.name, "input": _json_object(part.arguments)}
                )
        return {
            "id": id_in_style(response.id, "msg_", "chatcmpl-"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _stop_reason(response.finish_reason, response.stop_sequence),
            "stop_sequence": response.stop_sequence,
            "usage": _usage_body(response.usage),
        }

    def stream_renderer(
        self, *, model: str, include_usage: bool, prompt_estimate: int | None = None
    ) -> AnthropicStreamRenderer:
        return AnthropicStreamRenderer(model=model, prompt_estimate=prompt_estimate)

    # Facing a provider --------------------------------------------------------------------------

    def build_request(
        self, request: ChatRequest, *, upstream_model: str, stream: bool, max_output_tokens: int | None
    ) -> dict:
        max_tokens = request.max_tokens
        if max_output_tokens is not None:
            max_tokens = min(max_tokens, max_output_tokens) if max_tokens else max_output_tokens
        out: dict = {
            "model": upstream_model,
            "messages": _messages_out(request.messages),
            "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
        }
        system = [part.text for part in request.system if part.text]
        if len(system) == 1:
            out["system"] = system[0]
        elif system:
            out["system"] = [{"type": "text", "text": text} for text in system]
        if request.temperature is not None:
            out["temperature"] = request.temperature
        if request.top_p is not None:
            out["top_p"] = request.top_p
        if request.stop:
            out["stop_sequences"] = list(request.stop)
        if request.tools:
            tools = []
            for tool in request.tools:
                entry = {"name": tool.name, "input_schema": tool.parameters or dict(_EMPTY_SCHEMA)}
                if tool.description:
                    entry["description"] = tool.description
                tools.append(entry)
            out["tools"] = tools
            choice = request.tool_choice
            tool_choice = {"type": _CHOICE_OUT[choice.mode]} if choice is not None else None
            if tool_choice is not None and choice.mode == "tool":
                tool_choice["name"] = choice.name
            if request.parallel_tool_calls is False:
                tool_choice = tool_choice or {"type": "auto"}
                if tool_choice["type"] != "none":
                    tool_choice["disable_parallel_tool_use"] = True
            if tool_choice is not None:
                out["tool_choice"] = tool_choice
        if request.user:
            out["metadata"] = {"user_id": request.user}
        if request.choices > 1:
            raise bad_request(
                f"'n' is {request.choices}, but this model's provider answers one choice per request", param="n"
            )
        if request.output_format is not None:
            if request.output_format["type"] != "json_schema":
                raise bad_request(
                    "'response_format' json_object has no equivalent at this model's provider; use json_schema",
                    param="response_format",
                )
            out["output_format"] = {"type": "json_schema", "schema": request.output_format["schema"]}
        budget = budget_for(request)
        if budget:
            budget = max(budget, 1024)
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}
            # Anthropic wants the budget below max_tokens, and no sampling settings while thinking.
            if out["max_tokens"] <= budget:
                out["max_tokens"] = budget + min(out["max_tokens"], DEFAULT_MAX_TOKENS)
            out.pop("temperature", None)
            out.pop("top_p", None)
        if stream:
            out["stream"] = True
        return out

    def parse_response(self, data: dict) -> ChatResponse:
        parts: list[Part] = []
        for block in array_of(data.get("content"), "content"):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and text_of(block.get("text"), "content[].text") is not None:
                parts.append(Text(block["text"]))
            elif kind == "thinking" and text_of(block.get("thinking"), "content[].thinking") is not None:
                parts.append(Thinking(block["thinking"], text_of(block.get("signature"), "content[].signature")))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                tool_id = text_of(block.get("id"), "content[].id") or ""
                parts.append(ToolCall(tool_id, text_of(block.get("name"), "content[].name") or "", arguments))
        response_id = data.get("id")
        return ChatResponse(
            id=response_id if isinstance(response_id, str) else "",
            parts=parts,
            finish_reason=_finish_in(data.get("stop_reason"), "stop_reason"),
            usage=self.response_usage(data),
            stop_sequence=text_of(data.get("stop_sequence"), "stop_sequence"),
        )

    def stream_parser(self) -> AnthropicStreamParser:
        return AnthropicStreamParser()


anthropic = register(
    AnthropicDialect(
        name="anthropic",
        paths={"chat": "/v1/messages", "models": "/v1/models", "count_tokens": "/v1/messages/count_tokens"},
    )
)
