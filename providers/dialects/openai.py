"""OpenAI Chat Completions wire format (OpenAI, DeepSeek, 01.AI, OpenRouter, Ollama, vLLM, ...)."""

import hashlib
import time
import uuid

import orjson

from aigateway.errors import GatewayError, bad_request
from providers.dialects import register
from providers.dialects.base import Dialect, StreamParser, StreamPassthrough, StreamRenderer
from providers.dialects.canonical import (
    ChatRequest,
    ChatResponse,
    End,
    Finish,
    Image,
    MalformedEvent,
    MalformedValue,
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
    effort_for_budget,
    id_in_style,
)
from providers.dialects.checks import array_field, object_items, tool_checked
from providers.dialects.nesting import JSON_DEPTH_MAX, json_text_too_deep
from providers.dialects.sse import (
    data_model_replaced,
    data_null_member_removed,
    data_verbatim,
    model_member,
    sse_encode,
)
from providers.dialects.tool_ids import OPENAI_IDS, tool_id_for_client
from providers.dialects.values import array_of, index_of, object_of, text_of, token_count
from providers.redaction import upstream_message_redact

DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}
# The legacy function-calling finish reason means the same as tool_calls.
_FINISH_IN = {"function_call": "tool_calls"}
_EMPTY_SCHEMA = {"type": "object", "properties": {}}


def usage_detail(raw: dict, details: str, name: str) -> int | None:
    """A count inside a usage's details object (`prompt_tokens_details.cached_tokens`); None when absent or
    not a count: a part of a count already read, so a provider's odd detail costs it only that detail."""
    value = raw.get(details)
    value = value.get(name) if isinstance(value, dict) else None
    try:
        return token_count(value, name)
    except MalformedValue:
        return None


def _usage_report(raw) -> UsageReport | None:
    """OpenAI's usage: cache reads in prompt_tokens_details.cached_tokens, reasoning in
    completion_tokens_details.reasoning_tokens; cache writes, which OpenAI does not bill apart, as
    prompt_tokens_details.cache_write_tokens where an OpenAI-compatible provider reports them (OpenRouter).
    None when there is none; MalformedValue when it is not an object of token counts."""
    if raw is None:
        return None
    raw = object_of(raw, "usage")
    return UsageReport(
        token_count(raw.get("prompt_tokens"), "usage.prompt_tokens") or 0,
        token_count(raw.get("completion_tokens"), "usage.completion_tokens") or 0,
        usage_detail(raw, "prompt_tokens_details", "cached_tokens") or 0,
        cache_write_tokens=usage_detail(raw, "prompt_tokens_details", "cache_write_tokens"),
        reasoning_tokens=usage_detail(raw, "completion_tokens_details", "reasoning_tokens"),
    )


def _choices(data: dict) -> list[dict]:
    """A reply's or a chunk's choices (objects; anything else in the array is skipped)."""
    return [choice for choice in array_of(data.get("choices"), "choices") if isinstance(choice, dict)]


def _finish_in(choice: dict) -> str | None:
    finish = text_of(choice.get("finish_reason"), "choices[].finish_reason")
    return _FINISH_IN.get(finish, finish) if finish else None


def _tool_call_in(call, where: str) -> tuple[dict, dict]:
    """A tool call (or a fragment of one) and its function, each an object."""
    call = object_of(call, where)
    return call, object_of(call.get("function"), f"{where}.function")


def upstream_error_text(payload) -> str | None:
    """The message of an OpenAI-style error body - {"error": {"message"}}, {"error": "..."}, or vLLM's
    {"message"} - when it is text, with every credential in it redacted; None otherwise."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str):
        message = payload.get("message")
    return upstream_message_redact(message) if isinstance(message, str) and message else None


def _usage(raw) -> Usage | None:
    report = _usage_report(raw)
    return None if report is None else report.usage()


def _usage_body(usage: Usage, *, estimated: bool = False) -> dict:
    body = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.cached_tokens or usage.cache_write_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
        if usage.cache_write_tokens:
            body["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens is not None:  # None: nobody counted it, which is not 0
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    if estimated:
        body["estimated"] = True
    return body


# OpenAI-compatible providers cap `user` (64 to 128 characters); Claude Code's metadata.user_id is a
# longer JSON string. A long one becomes a stable digest, so per-user abuse tracking still works.
_USER_ID_MAX = 64


def _user_id(user: str) -> str:
    if len(user) <= _USER_ID_MAX:
        return user
    return "u-" + hashlib.sha256(user.encode()).hexdigest()[:40]


def _output_format_in(raw) -> dict | None:
    if not isinstance(raw, dict) or raw.get("type") in (None, "text"):
        return None
    if raw.get("type") == "json_schema" and isinstance(raw.get("json_schema"), dict):
        spec = raw["json_schema"]
        return {"type": "json_schema", "schema": spec.get("schema") or {}, "name": spec.get("name") or "output"}
    if raw.get("type") == "json_object":
        return {"type": "json_object"}
    raise bad_request(f"'response_format' of type {raw.get('type')!r} cannot be translated", param="response_format")


def _output_format_out(spec: dict) -> dict:
    if spec["type"] == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": spec.get("name") or "output", "schema": spec["schema"]}}


def _new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


# Client request -> canonical --------------------------------------------------------------------


def _image(url, where: str) -> Image:
    if not isinstance(url, str) or not url:
        raise bad_request(f"'{where}.image_url.url' must be a non-empty string", param=f"{where}.image_url")
    if not url.startswith("data:"):
        return Image(url=url)
    header, comma, data = url[5:].partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request(f"'{where}.image_url.url' must be a base64 data URL or an http(s) URL", param=where)
    media_type = header.split(";", 1)[0] or "image/png"
    return Image(data=data, media_type=media_type)


def _parts(content, where: str, *, images: bool) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Text(content)] if content else []
    parts: list[Part] = []
    for index, part in enumerate(content):
        here = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            parts.append(Text(part[kind]))
        elif kind == "image_url" and images:
            image = part.get("image_url")
            parts.append(_image(image.get("url") if isinstance(image, dict) else image, here))
        else:
            raise bad_request(
                f"'{here}' is a {kind or 'malformed'!r} content part, which this model's provider does not accept",
                param=here,
            )
    return parts


def _tool(raw, where: str) -> Tool:
    function = raw.get("function") if isinstance(raw, dict) and raw.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"'{where}' must be a function tool with a name", param=where)
    return _function(function, f"{where}.function")


def _function(function, where: str) -> Tool:
    """A function definition: `tools[i].function`, or a bare one in the legacy `functions`."""
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"'{where}' must be a function with a name", param=where)
    return tool_checked(function, where, "parameters", _EMPTY_SCHEMA)


def tool_arguments(value, where: str) -> str:
    """Tool-call arguments as the JSON text a client sent them as; a 400 naming them when they are not
    text, or nest deeper than a translation could send on."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"'{where}' must be a string of JSON, got {type(value).__name__}", param=where)
    if json_text_too_deep(value):
        raise bad_request(f"'{where}' nests JSON more than {JSON_DEPTH_MAX} levels deep", param=where)
    return value


def _stop(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad_request("'stop' must be a string or an array of strings", param="stop")
    return value


def _tool_choice(raw) -> ToolChoice | None:
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    if isinstance(raw, dict):
        function = raw.get("function") if raw.get("type") == "function" else raw  # legacy function_call: {"name"}
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return ToolChoice("tool", function["name"])
    return None


# Canonical -> upstream request ------------------------------------------------------------------


def _content_out(parts: list[Text | Image]):
    if len(parts) == 1 and isinstance(parts[0], Text):
        return parts[0].text
    out = []
    for part in parts:
        if isinstance(part, Text):
            out.append({"type": "text", "text": part.text})
        else:
            url = part.url or f"data:{part.media_type or 'image/png'};base64,{part.data}"
            out.append({"type": "image_url", "image_url": {"url": url}})
    return out


def _messages_out(message: Message) -> list[dict]:
    if message.role == "assistant":
        text = "".join(part.text for part in message.parts if isinstance(part, Text))
        calls = [part for part in message.parts if isinstance(part, ToolCall)]
        out = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                for c in calls
            ]
        return [out]
    # Tool results become tool messages, which must directly follow the assistant's tool calls.
    messages, rest = [], []
    for part in message.parts:
        if isinstance(part, ToolResult):
            text = "".join(p.text for p in part.content if isinstance(p, Text))
            messages.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": text})
            rest.extend(p for p in part.content if isinstance(p, Image))
        elif isinstance(part, Text | Image):
            rest.append(part)
    if rest:
        messages.append({"role": "user", "content": _content_out(rest)})
    return messages


# Stream parsing, rendering and pass-through -----------------------------------------------------


class OpenAIStreamParser(StreamParser):
    def __init__(self) -> None:
        self.started = False

    def feed(self, name: str | None, data: str) -> tuple[dict | None, list[StreamEvent]]:
        if data == "[DONE]":
            return None, [End()]
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedEvent("upstream event is not JSON") from None
        if not isinstance(chunk, dict):
            raise MalformedEvent("upstream event is not a JSON object")
        error = chunk.get("error")
        if error:
            kind = error.get("type") if isinstance(error, dict) else None
            message = upstream_error_text(chunk) or "upstream error"
            return chunk, [StreamError(message, kind if isinstance(kind, str) else None)]
        events: list[StreamEvent] = []
        if not self.started:
            self.started = True
            message_id = chunk.get("id")
            events.append(Start(message_id if isinstance(message_id, str) else ""))
        for choice in _choices(chunk):
            delta = object_of(choice.get("delta"), "choices[].delta")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events.append(ThinkingDelta(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(TextDelta(content))
            legacy = choice.get("text")  # legacy /v1/completions chunks carry text, not a delta
            if isinstance(legacy, str) and legacy:
                events.append(TextDelta(legacy))
            for call in array_of(delta.get("tool_calls"), "choices[].delta.tool_calls"):
                call, function = _tool_call_in(call, "choices[].delta.tool_calls[]")
                events.append(
                    ToolCallDelta(
                        index=index_of(call.get("index"), "choices[].delta.tool_calls[].index"),
                        id=text_of(call.get("id"), "choices[].delta.tool_calls[].id"),
                        name=text_of(function.get("name"), "choices[].delta.tool_calls[].function.name"),
                        arguments=text_of(function.get("arguments"), "choices[].delta.tool_calls[].function.arguments")
                        or "",
                    )
                )
            finish = _finish_in(choice)
            if finish:
                events.append(Finish(finish))
        usage = _usage_report(chunk.get("usage"))
        if usage is not None:
            events.append(usage)
        return chunk, events


class OpenAIStreamRenderer(StreamRenderer):
    """Canonical events -> chat.completion.chunk events, the way OpenAI streams them."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = ""
        self.created = int(time.time())
        self.started = False
        self.errored = False
        self.usage = UsageReport()

    def _chunk(self, choices: list, **extra) -> bytes:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = None
        payload.update(extra)
        return sse_encode(orjson.dumps(payload))

    def _delta(self, delta: dict, finish_reason: str | None = None) -> list[bytes]:
        out = self._start()
        out.append(self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]))
        return out

    def _start(self, *, tool_call: bool = False) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        self.id = self.id or _new_id()
        # A reply that opens with a tool call has no text: null, as OpenAI sends it, not an empty text part.
        delta = {"role": "assistant", "content": None if tool_call else ""}
        return [self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])]

    def render(self, event: StreamEvent) -> list[bytes]:
        match event:
            case Start(id=message_id):
                # The role chunk waits for the first content: its `content` is "" for text, null for a tool call.
                self.id = self.id or id_in_style(message_id, "chatcmpl-", "msg_")
                return []
            case TextDelta(text=text) if text:
                return self._delta({"content": text})
            case ThinkingDelta(text=text) if text:
                return self._delta({"reasoning_content": text})
            case ToolCallDelta():
                call: dict = {"index": event.index}
                if event.id is not None or event.name is not None:
                    call["id"] = tool_id_for_client(event.id, OPENAI_IDS)
                    call["type"] = "function"
                    call["function"] = {"name": event.name or "", "arguments": event.arguments}
                else:
                    call["function"] = {"arguments": event.arguments}
                return self._start(tool_call=True) + self._delta({"tool_calls": [call]})
            case Finish(reason=reason):
                return self._delta({}, reason)
            case UsageReport():
                self.usage.merge(event)
                return []
            case StreamError(message=message):
                self.errored = True
                error = GatewayError(502, "upstream_stream_error", f"upstream failed mid-stream: {message}")
                return [openai.stream_error_event(error)]
        return []

    def close(self) -> list[bytes]:
        if self.errored:
            return []  # the error event already ended the stream with [DONE]
        out = self._start()
        reported = self.usage
        if self.include_usage and (reported.prompt_tokens is not None or reported.completion_tokens is not None):
            out.append(self._chunk([], usage=_usage_body(reported.usage(), estimated=reported.estimated)))
        out.append(DONE)
        return out


class OpenAIPassthrough(StreamPassthrough):
    def __init__(self, *, model: str, include_usage: bool) -> None:
        self.model = model
        self.model_member = model_member(model)
        self.include_usage = include_usage
        self.usage_seen = False
        self.last: dict = {}

    def forward(self, name: str | None, payload: dict | None, data: str | None = None) -> bytes | None:
        if payload is None:
            return None  # [DONE] is ours to send, once, at the end
        verbatim = data_verbatim(data)
        if "usage" in payload:
            if not self.include_usage:
                if payload["usage"] and not payload.get("choices") and not payload.get("error"):
                    return None  # the usage-only chunk we asked for on the client's behalf
                if verbatim and payload["usage"] is None:
                    data = data_null_member_removed(data, "usage")
                    verbatim = data is not None
                else:
                    verbatim = False
                del payload["usage"]
            elif payload["usage"]:
                self.usage_seen = True
        if "model" in payload:
            if verbatim:
                data = data_model_replaced(data, self.model_member) if isinstance(payload["model"], str) else None
                verbatim = data is not None
            payload["model"] = self.model
        self.last = payload
        return sse_encode(data.encode() if verbatim else orjson.dumps(payload))

    def close(self) -> list[bytes]:
        if self.include_usage and not self.usage_seen and self.estimate is not None and self.last.get("id"):
            # The provider ignored stream_options: the client still gets a usage chunk, the gateway's count.
            chunk = {
                "id": self.last["id"],
                "object": "chat.completion.chunk",
                "created": self.last.get("created", 0),
                "model": self.model,
                "choices": [],
                "usage": _usage_body(self.estimate(), estimated=True),
            }
            return [sse_encode(orjson.dumps(chunk)), DONE]
        return [DONE]


class OpenAIDialect(Dialect):
    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        headers.update(extra_headers)
        return headers

    def error_body(self, error: GatewayError) -> dict:
        error_type = error.error_type or _ERROR_TYPES.get(
            error.status, "server_error" if error.status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": error.message, "type": error_type, "param": error.param, "code": error.code}}

    def stream_error_event(self, error: GatewayError) -> bytes:
        return sse_encode(orjson.dumps(self.error_body(error))) + DONE

    def upstream_error_message(self, payload) -> str | None:
        return upstream_error_text(payload)

    # Same-dialect relay -------------------------------------------------------------------------

    def prepare_chat(self, body: dict, *, upstream_model: str, stream: bool, max_output_tokens: int | None) -> dict:
        """The client's body, passed through with our model name, forced usage, capped output."""
        out = dict(body)
        out["model"] = upstream_model
        if stream:
            options = dict(out.get("stream_options") or {})
            options["include_usage"] = True
            out["stream_options"] = options
        if max_output_tokens is not None:
            capped = False
            for name in ("max_tokens", "max_completion_tokens"):
                value = out.get(name)
                if isinstance(value, int) and value > max_output_tokens:
                    out[name] = max_output_tokens
                if isinstance(out.get(name), int):
                    capped = True
            if not capped:
                out["max_tokens"] = max_output_tokens
        return out

    def stream_passthrough(self, *, model: str, include_usage: bool) -> OpenAIPassthrough:
        return OpenAIPassthrough(model=model, include_usage=include_usage)

    def response_usage(self, data: dict) -> Usage | None:
        return _usage(data.get("usage"))

    def response_text(self, data: dict) -> str:
        parts = []
        for choice in _choices(data):
            message = object_of(choice.get("message"), "choices[].message")
            content = message.get("content")
            if isinstance(content, list):
                parts.extend(p.get("text") for p in content if isinstance(p, dict))
            else:
                parts.append(text_of(content, "choices[].message.content"))
            parts.append(choice.get("text"))
            for call in array_of(message.get("tool_calls"), "choices[].message.tool_calls"):
                _call, function = _tool_call_in(call, "choices[].message.tool_calls[]")
                parts.append(function.get("name"))
                parts.append(function.get("arguments"))
        return "".join(p for p in parts if isinstance(p, str))

    # Facing a client ----------------------------------------------------------------------------

    def parse_request(self, body: dict) -> ChatRequest:
        """A checked /v1/chat/completions body -> canonical; OpenAI-only fields (logprobs,
        penalties, response_format, ...) have no counterpart and are left out."""
        request = ChatRequest(messages=[])
        for index, message in enumerate(object_items(body, "messages")):
            where = f"messages[{index}]"
            role, content = message.get("role"), message.get("content")
            if content is not None and not isinstance(content, str | list):
                raise bad_request(
                    f"'{where}.content' must be a string or an array of content parts", param=f"{where}.content"
                )
            if role in ("system", "developer"):
                request.system.extend(p for p in _parts(content, where, images=False) if isinstance(p, Text))
            elif role == "user":
                request.messages.append(Message("user", _parts(content, where, images=True)))
            elif role == "assistant":
                parts = _parts(content, where, images=False)
                for number, call in enumerate(array_field(message, "tool_calls", f"{where}.tool_calls")):
                    here = f"{where}.tool_calls[{number}]"
                    function = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                        raise bad_request(f"'{here}' must be a function call with a name", param=here)
                    arguments = tool_arguments(function.get("arguments"), f"{here}.function.arguments")
                    parts.append(ToolCall(str(call.get("id") or ""), function["name"], arguments))
                request.messages.append(Message("assistant", parts))
            elif role == "tool":
                call_id = message.get("tool_call_id")
                if call_id is not None and not isinstance(call_id, str):
                    raise bad_request(f"'{where}.tool_call_id' must be a string", param=f"{where}.tool_call_id")
                result = ToolResult(call_id or "", _parts(content, where, images=False))
                request.messages.append(Message("user", [result]))
            else:
                raise bad_request(
                    f"'{where}.role' is {role!r}, which this model's provider does not accept", param=f"{where}.role"
                )
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        request.max_tokens = max_tokens if isinstance(max_tokens, int) else None
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(request, name, value)
        request.stop = _stop(body.get("stop"))
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise bad_request("'seed' must be an integer", param="seed")
        request.seed = seed
        request.stream = bool(body.get("stream"))
        tools = array_field(body, "tools")
        if tools:
            request.tools = [_tool(raw, f"tools[{index}]") for index, raw in enumerate(tools)]
        else:  # the legacy form: bare function definitions
            request.tools = [
                _function(raw, f"functions[{index}]") for index, raw in enumerate(array_field(body, "functions"))
            ]
        request.tool_choice = _tool_choice(body.get("tool_choice", body.get("function_call")))
        if isinstance(body.get("parallel_tool_calls"), bool):
            request.parallel_tool_calls = body["parallel_tool_calls"]
        if isinstance(body.get("user"), str):
            request.user = body["user"]
        effort = body.get("reasoning_effort")
        if isinstance(effort, str) and effort != "none":
            request.reasoning_effort = effort
        request.output_format = _output_format_in(body.get("response_format"))
        n = body.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            request.choices = n
        return request

    def render_response(self, response: ChatResponse, *, model: str) -> dict:
        text = "".join(p.text for p in response.parts if isinstance(p, Text))
        thinking = "".join(p.text for p in response.parts if isinstance(p, Thinking))
        calls = [p for p in response.parts if isinstance(p, ToolCall)]
        message: dict = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
        if thinking:
            message["reasoning_content"] = thinking
        if calls:
            message["tool_calls"] = [
                {
                    "id": tool_id_for_client(c.id, OPENAI_IDS),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ]
        out = {
            "id": id_in_style(response.id, "chatcmpl-", "msg_"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": response.finish_reason or "stop"}
            ],
        }
        if response.usage is not None:
            out["usage"] = _usage_body(response.usage)
        return out

    def stream_renderer(
        self, *, model: str, include_usage: bool, prompt_estimate: int | None = None
    ) -> OpenAIStreamRenderer:
        return OpenAIStreamRenderer(model=model, include_usage=include_usage)

    # Facing a provider --------------------------------------------------------------------------

    def build_request(
        self, request: ChatRequest, *, upstream_model: str, stream: bool, max_output_tokens: int | None
    ) -> dict:
        messages: list[dict] = []
        if request.system:
            messages.append({"role": "system", "content": "\n\n".join(part.text for part in request.system)})
        for message in request.messages:
            messages.extend(_messages_out(message))
        out: dict = {"model": upstream_model, "messages": messages}
        max_tokens = request.max_tokens
        if max_output_tokens is not None:
            max_tokens = min(max_tokens, max_output_tokens) if max_tokens else max_output_tokens
        if max_tokens:
            out["max_tokens"] = max_tokens
        if request.temperature is not None:
            out["temperature"] = request.temperature
        if request.top_p is not None:
            out["top_p"] = request.top_p
        if request.stop:
            out["stop"] = list(request.stop)
        if request.seed is not None:
            out["seed"] = request.seed
        if request.tools:
            out["tools"] = [
                {
                    "type": "function",
                    "function": {
                        k: v
                        for k, v in (("name", t.name), ("description", t.description), ("parameters", t.parameters))
                        if v is not None
                    },
                }
                for t in request.tools
            ]
            choice = request.tool_choice
            if choice is not None:
                out["tool_choice"] = (
                    {"type": "function", "function": {"name": choice.name}} if choice.mode == "tool" else choice.mode
                )
            if request.parallel_tool_calls is not None:
                out["parallel_tool_calls"] = request.parallel_tool_calls
        if request.user:
            out["user"] = _user_id(request.user)
        effort = request.reasoning_effort or (
            effort_for_budget(request.thinking_budget) if request.thinking_budget else None
        )
        if effort:
            out["reasoning_effort"] = effort
        if request.output_format is not None:
            out["response_format"] = _output_format_out(request.output_format)
        if request.choices > 1:
            out["n"] = request.choices
        if stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return out

    def parse_response(self, data: dict) -> ChatResponse:
        choices = _choices(data)
        choice = choices[0] if choices else {}
        message = object_of(choice.get("message"), "choices[0].message")
        parts: list[Part] = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append(Thinking(reasoning))
        content = message.get("content")
        if isinstance(content, list):
            parts.extend(Text(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        elif text_of(content, "choices[0].message.content"):
            parts.append(Text(content))
        for call in array_of(message.get("tool_calls"), "choices[0].message.tool_calls"):
            call, function = _tool_call_in(call, "choices[0].message.tool_calls[]")
            where = "choices[0].message.tool_calls[].function"
            parts.append(
                ToolCall(
                    text_of(call.get("id"), "choices[0].message.tool_calls[].id") or "",
                    text_of(function.get("name"), f"{where}.name") or "",
                    text_of(function.get("arguments"), f"{where}.arguments") or "",
                )
            )
        response_id = data.get("id")
        return ChatResponse(
            id=response_id if isinstance(response_id, str) else "",
            parts=parts,
            finish_reason=_finish_in(choice),
            usage=self.response_usage(data),
        )

    def stream_parser(self) -> OpenAIStreamParser:
        return OpenAIStreamParser()


openai = register(
    OpenAIDialect(
        name="openai",
        paths={
            "chat": "/chat/completions",
            "models": "/models",
            "embeddings": "/embeddings",
            "completions": "/completions",
        },
    )
)
