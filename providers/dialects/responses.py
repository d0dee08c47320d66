"""OpenAI Responses wire format (`POST /v1/responses`).

Pure translation: stored responses and `previous_response_id` are the door's (streaming.responses_store), which
hands this dialect the whole conversation as input; `conversation` is refused at the edge. Built-in tools (web search,
file search, computer use, ...) run at OpenAI and have no counterpart elsewhere; they pass through
to a Responses provider and are refused with a 400 when the request must be translated.
"""

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
)
from providers.dialects.checks import array_field, object_items, tool_checked
from providers.dialects.namespaces import flat_name
from providers.dialects.openai import openai as chat_dialect
from providers.dialects.openai import tool_arguments, upstream_error_text, usage_detail
from providers.dialects.sse import data_verbatim, sse_encode
from providers.dialects.tool_ids import OPENAI_IDS, tool_id_for_client
from providers.dialects.values import array_of, index_of, object_of, text_of, token_count

_EMPTY_SCHEMA = {"type": "object", "properties": {}}
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
_FINISH_IN = {"max_output_tokens": "length", "content_filter": "content_filter"}
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _response_id(value: str | None) -> str:
    """Responses ids read `resp_...`; a translated reply's upstream id (chatcmpl-, msg_) is kept after it."""
    if value and value.startswith("resp_"):
        return value
    return "resp_" + (value.replace("-", "_") if value else uuid.uuid4().hex)


def _usage_report(raw) -> UsageReport | None:
    """input_tokens_details.cached_tokens are cache reads, output_tokens_details.reasoning_tokens the
    reasoning part of output_tokens; cache writes as input_tokens_details.cache_write_tokens where a
    compatible provider reports them, as in Chat Completions. None when there is none; MalformedValue
    when it is not an object of token counts."""
    if raw is None:
        return None
    raw = object_of(raw, "usage")
    return UsageReport(
        token_count(raw.get("input_tokens"), "usage.input_tokens") or 0,
        token_count(raw.get("output_tokens"), "usage.output_tokens") or 0,
        usage_detail(raw, "input_tokens_details", "cached_tokens") or 0,
        cache_write_tokens=usage_detail(raw, "input_tokens_details", "cache_write_tokens"),
        reasoning_tokens=usage_detail(raw, "output_tokens_details", "reasoning_tokens"),
    )


def _usage(raw) -> Usage | None:
    report = _usage_report(raw)
    return None if report is None else report.usage()


def _usage_body(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    input_details = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        input_details["cache_write_tokens"] = usage.cache_write_tokens
    body = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": input_details,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    # A count nobody made is left out, not shown as 0; the whole object, as clients read it all or nothing.
    if usage.reasoning_tokens is not None:
        body["output_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def response_skeleton(*, response_id: str, model: str, status: str, **fields) -> dict:
    """A response object with no output yet (a background response queued or in progress)."""
    return (
        _response_object(
            response_id=response_id, created_at=int(time.time()), model=model, status=status, output=[], usage=None
        )
        | fields
    )


def _status(finish_reason: str | None) -> tuple[str, dict | None]:
    reason = _INCOMPLETE_REASONS.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _response_object(
    *, response_id: str, created_at: int, model: str, status: str, output: list, usage: dict | None, **extra
) -> dict:
    """A `response` object with every field the official SDKs' Response model requires."""
    body = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }
    body.update(extra)
    return body


def _message_item(item_id: str, text: str, status: str) -> dict:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def _reasoning_item(item_id: str, text: str) -> dict:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


def _function_call_item(item_id: str, call: ToolCall, status: str) -> dict:
    item = {
        "id": item_id,
        "type": "function_call",
        "call_id": tool_id_for_client(call.id, OPENAI_IDS),
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }
    if call.namespace is not None:
        item["namespace"] = call.namespace
    return item


# Client request -> canonical --------------------------------------------------------------------


def _image_in(part: dict, where: str) -> Image:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise bad_request(
            f"'{where}' must carry an 'image_url' (uploaded files cannot be translated for this model's provider)",
            param=where,
        )
    if not url.startswith("data:"):
        return Image(url=url)
    header, comma, data = url[5:].partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request(f"'{where}.image_url' must be a base64 data URL or an http(s) URL", param=where)
    return Image(data=data, media_type=header.split(";", 1)[0] or "image/png")


def _content_in(content, where: str) -> list[Text | Image]:
    if isinstance(content, str):
        return [Text(content)] if content else []
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of content parts", param=where)
    parts: list[Text | Image] = []
    for index, part in enumerate(content):
        here = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text", part.get("refusal")), str):
            parts.append(Text(part.get("text", part.get("refusal"))))
        elif kind == "input_image":
            parts.append(_image_in(part, here))
        else:
            raise bad_request(
                f"'{here}' is a {kind or 'malformed'!r} content part, which cannot be translated for this "
                "model's provider",
                param=here,
            )
    return parts


def _append(messages: list[Message], role: str, part: Part) -> None:
    """Function calls join the assistant turn before them, and their outputs share one user turn:
    chat providers want the calls of one turn in one message and the results right after it."""
    last = messages[-1] if messages else None
    if last is not None and last.role == role:
        if role == "assistant" or all(isinstance(p, ToolResult) for p in last.parts):
            last.parts.append(part)
            return
    messages.append(Message(role, [part]))


def _input_in(raw, request: ChatRequest) -> None:
    if isinstance(raw, str):
        request.messages.append(Message("user", [Text(raw)]))
        return
    for index, item in enumerate(raw):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            parts = _content_in(item.get("content"), where)
            if role in ("system", "developer"):
                if any(isinstance(p, Image) for p in parts):
                    raise bad_request(f"'{where}' is {role} text and may hold only text parts", param=where)
                request.system.extend(parts)
            elif role in ("user", "assistant"):
                request.messages.append(Message(role, list(parts)))
            else:
                raise bad_request(
                    f"'{where}.role' is {role!r}; expected user, assistant, system or developer", param=f"{where}.role"
                )
        elif kind == "function_call":
            name, namespace = item.get("name"), item.get("namespace")
            if not isinstance(name, str):
                raise bad_request(f"'{where}' must be a function_call with a name", param=where)
            if namespace is not None:
                if not isinstance(namespace, str):
                    raise bad_request(f"'{where}.namespace' must be a string", param=f"{where}.namespace")
                name = _flat_name(request, namespace, name)
            call = ToolCall(
                str(item.get("call_id") or ""),
                name,
                tool_arguments(item.get("arguments"), f"{where}.arguments"),
            )
            _append(request.messages, "assistant", call)
        elif kind == "function_call_output":
            output = item.get("output")
            content = _content_in(output, where) if output is not None else []
            _append(request.messages, "user", ToolResult(str(item.get("call_id") or ""), content))
        elif kind == "reasoning":
            continue  # the previous turn's reasoning, readable only by the provider that wrote it
        else:
            raise bad_request(
                f"'{where}' is a {kind!r} item, which cannot be translated for this model's provider", param=where
            )


def _function_tool_in(raw: dict, where: str) -> Tool:
    if not isinstance(raw.get("name"), str):
        raise bad_request(f"'{where}' must be a function tool with a name", param=where)
    return tool_checked(raw, where, "parameters")


def _tools_in(raw_tools: list, request: ChatRequest) -> None:
    """Function tools as they are, the function tools of a namespace under flat names (see
    providers.dialects.namespaces), and built-in tools noted for the relay to drop or refuse."""
    namespaces: list[tuple[str, str, dict]] = []
    for index, raw in enumerate(raw_tools):
        where = f"tools[{index}]"
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind == "function":
            request.tools.append(_function_tool_in(raw, where))
        elif kind == "namespace":
            namespace = raw.get("name")
            if not isinstance(namespace, str) or not namespace:
                raise bad_request(f"'{where}' must be a namespace tool with a name", param=f"{where}.name")
            inner = array_field(raw, "tools", f"{where}.tools")
            for position, tool in enumerate(inner):
                here = f"{where}.tools[{position}]"
                inner_kind = tool.get("type") if isinstance(tool, dict) else None
                if inner_kind == "function":
                    namespaces.append((namespace, here, tool))
                else:
                    request.builtin_tools.append((here, str(inner_kind)))
        else:
            request.builtin_tools.append((where, str(kind)))
    # Plain tools keep their names; namespaced ones get names no other tool has.
    taken = {tool.name for tool in request.tools}
    for namespace, where, raw in namespaces:
        tool = _function_tool_in(raw, where)
        flat = _flat_name(request, namespace, tool.name, taken)
        taken.add(flat)
        request.tools.append(Tool(name=flat, description=tool.description, parameters=tool.parameters))


def _flat_name(request: ChatRequest, namespace: str, name: str, taken: set[str] | None = None) -> str:
    """The provider-side name of a namespaced tool: the one its definition got, else a new one."""
    for flat, (known_namespace, known_name) in request.namespaced_tools.items():
        if known_namespace == namespace and known_name == name:
            return flat
    if taken is None:
        taken = {tool.name for tool in request.tools}
    flat = flat_name(namespace, name, taken | set(request.namespaced_tools))
    request.namespaced_tools[flat] = (namespace, name)
    return flat


def _tool_choice_in(raw, request: ChatRequest) -> ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return ToolChoice(raw)
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "function" and isinstance(raw.get("name"), str):
        namespace = raw.get("namespace")
        if isinstance(namespace, str):
            return ToolChoice("tool", _flat_name(request, namespace, raw["name"]))
        return ToolChoice("tool", raw["name"])
    if isinstance(kind, str) and kind not in ("function", "allowed_tools", "custom", "mcp"):
        # A built-in tool forced: it goes (or the request is refused) with the tool itself.
        request.builtin_tools.append(("tool_choice", kind))
        return None
    raise bad_request("'tool_choice' can be translated only as auto, none, required or a function", param="tool_choice")


def _output_format_in(text) -> dict | None:
    spec = text.get("format") if isinstance(text, dict) else None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in (None, "text"):
        return None
    if kind == "json_schema":
        return {"type": "json_schema", "schema": spec.get("schema") or {}, "name": spec.get("name") or "output"}
    if kind == "json_object":
        return {"type": "json_object"}
    raise bad_request(f"'text.format' of type {kind!r} cannot be translated", param="text.format")


# Canonical -> upstream request ------------------------------------------------------------------


def _image_out(image: Image) -> dict:
    url = image.url or f"data:{image.media_type or 'image/png'};base64,{image.data}"
    return {"type": "input_image", "image_url": url}


def _input_out(messages: list[Message]) -> list[dict]:
    items: list[dict] = []
    for message in messages:
        content: list[dict] = []
        for part in message.parts:
            if isinstance(part, Text) and part.text:
                kind = "output_text" if message.role == "assistant" else "input_text"
                content.append({"type": kind, "text": part.text})
            elif isinstance(part, Image):
                content.append(_image_out(part))
            elif isinstance(part, ToolCall):
                items.append(
                    {
                        "type": "function_call",
                        "call_id": part.id,
                        "name": part.name,
                        "arguments": part.arguments or "{}",
                    }
                )
            elif isinstance(part, ToolResult):
                text = "".join(p.text for p in part.content if isinstance(p, Text))
                items.append({"type": "function_call_output", "call_id": part.tool_call_id, "output": text})
                content.extend(_image_out(p) for p in part.content if isinstance(p, Image))
        if content:
            items.append({"type": "message", "role": message.role, "content": content})
    return items


# Stream parsing, rendering and pass-through -----------------------------------------------------


class ResponsesStreamParser(StreamParser):
    def __init__(self) -> None:
        # output_index of a function_call item -> tool call ordinal
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
        if kind == "response.output_text.delta":
            events.append(TextDelta(text_of(payload.get("delta"), "delta") or ""))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            events.append(ThinkingDelta(text_of(payload.get("delta"), "delta") or ""))
        elif kind == "response.function_call_arguments.delta":
            ordinal = self.tool_calls.get(index_of(payload.get("output_index"), "output_index"), 0)
            events.append(ToolCallDelta(ordinal, arguments=text_of(payload.get("delta"), "delta") or ""))
        elif kind == "response.output_item.added":
            item = object_of(payload.get("item"), "item")
            if item.get("type") == "function_call":
                index = index_of(payload.get("output_index"), "output_index")
                ordinal = self.tool_calls[index] = len(self.tool_calls)
                events.append(
                    ToolCallDelta(
                        ordinal,
                        text_of(item.get("call_id"), "item.call_id") or "",
                        text_of(item.get("name"), "item.name") or "",
                        text_of(item.get("arguments"), "item.arguments") or "",
                        text_of(item.get("namespace"), "item.namespace"),
                    )
                )
        elif kind == "response.created":
            response_id = object_of(payload.get("response"), "response").get("id")
            events.append(Start(response_id if isinstance(response_id, str) else ""))
        elif kind in ("response.completed", "response.incomplete"):
            response = object_of(payload.get("response"), "response")
            events.append(Finish(_finish_reason(response)))
            usage = _usage_report(response.get("usage"))
            if usage is not None:
                events.append(usage)
            events.append(End())
        elif kind == "response.failed":
            error = object_of(payload.get("response"), "response").get("error")
            code = error.get("code") if isinstance(error, dict) else None
            message = upstream_error_text({"error": error}) or "upstream response failed"
            events.append(StreamError(message, code if isinstance(code, str) else None))
        elif kind == "error":
            code = payload.get("code")
            message = upstream_error_text(payload) or "upstream error"
            events.append(StreamError(message, code if isinstance(code, str) else None))
        return payload, events


def _finish_reason(response: dict) -> str:
    if response.get("status") == "incomplete":
        details = object_of(response.get("incomplete_details"), "response.incomplete_details")
        return _FINISH_IN.get(text_of(details.get("reason"), "response.incomplete_details.reason"), "length")
    output = array_of(response.get("output"), "response.output")
    if any(isinstance(item, dict) and item.get("type") == "function_call" for item in output):
        return "tool_calls"
    return "stop"


class ResponsesStreamRenderer(StreamRenderer):
    """Canonical events -> the Responses event sequence: response.created and in_progress, then each
    output item (added, its content deltas, done), then response.completed with the whole output."""

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.id = ""
        self.created_at = int(time.time())
        self.sequence = 0
        self.started = False
        self.errored = False
        self.output: list[dict] = []  # finished items, by output_index
        self.open: dict | None = None  # the item being streamed: {"kind", "item", "text"}
        self.tool_items: dict[int, int] = {}  # tool call ordinal -> output_index
        self.finish: str | None = None
        self.usage = UsageReport()
        self._fields: dict = {}

    def _event(self, payload: dict) -> bytes:
        payload["sequence_number"] = self.sequence
        self.sequence += 1
        return sse_encode(orjson.dumps(payload), event=payload["type"])

    @property
    def response_fields(self) -> dict:
        return self._fields

    @response_fields.setter
    def response_fields(self, fields: dict) -> None:
        """Fields every response object of the stream gets (its id, `store`, ...), set by whoever stores it."""
        self._fields = fields
        self.id = fields.get("id") or self.id

    def _response(self, status: str, **extra) -> dict:
        response = _response_object(
            response_id=self.id,
            created_at=self.created_at,
            model=self.model,
            status=status,
            output=list(self.output),
            usage=None,
            **extra,
        )
        return response | self._fields if self._fields else response

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        self.id = self.id or _new_id("resp_")
        return [
            self._event({"type": "response.created", "response": self._response("in_progress")}),
            self._event({"type": "response.in_progress", "response": self._response("in_progress")}),
        ]

    def _open_item(self, kind: str, item: dict) -> list[bytes]:
        out = self._start() + self._close_item()
        index = len(self.output)
        self.open = {"kind": kind, "item": item, "text": [], "index": index}
        out.append(self._event({"type": "response.output_item.added", "output_index": index, "item": item}))
        where = {"item_id": item["id"], "output_index": index}
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._event({"type": "response.content_part.added", **where, "content_index": 0, "part": part}))
        elif kind == "reasoning":
            part = {"type": "summary_text", "text": ""}
            out.append(
                self._event(
                    {"type": "response.reasoning_summary_part.added", **where, "summary_index": 0, "part": part}
                )
            )
        return out

    def _close_item(self) -> list[bytes]:
        open_item, self.open = self.open, None
        if open_item is None:
            return []
        kind, item, index = open_item["kind"], open_item["item"], open_item["index"]
        text = "".join(open_item["text"])
        where = {"item_id": item["id"], "output_index": index}
        out = []
        if kind == "message":
            done = _message_item(item["id"], text, "completed")
            out.append(
                self._event(
                    {"type": "response.output_text.done", **where, "content_index": 0, "text": text, "logprobs": []}
                )
            )
            out.append(
                self._event(
                    {"type": "response.content_part.done", **where, "content_index": 0, "part": done["content"][0]}
                )
            )
        elif kind == "reasoning":
            done = _reasoning_item(item["id"], text)
            out.append(
                self._event({"type": "response.reasoning_summary_text.done", **where, "summary_index": 0, "text": text})
            )
            out.append(
                self._event(
                    {
                        "type": "response.reasoning_summary_part.done",
                        **where,
                        "summary_index": 0,
                        "part": done["summary"][0],
                    }
                )
            )
        else:
            done = {**item, "arguments": text, "status": "completed"}
            out.append(self._event({"type": "response.function_call_arguments.done", **where, "arguments": text}))
        self.output.append(done)
        out.append(self._event({"type": "response.output_item.done", "output_index": index, "item": done}))
        return out

    def _delta(self, event_type: str, text: str, **where) -> bytes:
        self.open["text"].append(text)
        item = self.open["item"]
        return self._event(
            {"type": event_type, "item_id": item["id"], "output_index": self.open["index"], **where, "delta": text}
        )

    def render(self, event: StreamEvent) -> list[bytes]:
        match event:
            case Start(id=upstream_id):
                self.id = self.id or _response_id(upstream_id)
                return self._start()
            case TextDelta(text=text) if text:
                out = []
                if self.open is None or self.open["kind"] != "message":
                    out = self._open_item(
                        "message", _message_item(_new_id("msg_"), "", "in_progress") | {"content": []}
                    )
                out.append(self._delta("response.output_text.delta", text, content_index=0, logprobs=[]))
                return out
            case ThinkingDelta(text=text) if text:
                out = []
                if self.open is None or self.open["kind"] != "reasoning":
                    out = self._open_item("reasoning", {"id": _new_id("rs_"), "type": "reasoning", "summary": []})
                out.append(self._delta("response.reasoning_summary_text.delta", text, summary_index=0))
                return out
            case ToolCallDelta(index=ordinal):
                out = []
                if ordinal not in self.tool_items:
                    call = ToolCall(event.id or "", event.name or "", "", event.namespace)
                    out = self._open_item("function_call", _function_call_item(_new_id("fc_"), call, "in_progress"))
                    self.tool_items[ordinal] = self.open["index"]
                # Arguments of a call whose item is already closed (interleaved calls) cannot be added any more.
                if event.arguments and self.open is not None and self.open["index"] == self.tool_items[ordinal]:
                    out.append(self._delta("response.function_call_arguments.delta", event.arguments))
                return out
            case Finish(reason=reason):
                self.finish = reason
                return self._start() + self._close_item()
            case UsageReport():
                self.usage.merge(event)
                return []
            case StreamError(message=message):
                self.errored = True
                text = f"upstream failed mid-stream: {message}"
                error = {"type": "error", "code": "upstream_stream_error", "message": text, "param": None}
                failed = self._response("failed", error={"code": "server_error", "message": text})
                return self._start() + [
                    self._event(error),
                    self._event({"type": "response.failed", "response": failed}),
                ]
        return []

    def close(self) -> list[bytes]:
        if self.errored:
            return []
        out = self._start() + self._close_item()
        status, incomplete = _status(self.finish)
        reported = self.usage
        usage = None
        if reported.prompt_tokens is not None or reported.completion_tokens is not None:
            usage = reported.usage()
        final = self._response(status, incomplete_details=incomplete)
        final["usage"] = _usage_body(usage)
        out.append(self._event({"type": f"response.{status}", "response": final}))
        return out


class ResponsesPassthrough(StreamPassthrough):
    def __init__(self, *, model: str) -> None:
        self.model = model
        # Fields every response object gets (its id, `store`, ...), set by whoever stores the answer.
        self.response_fields: dict = {}

    def forward(self, name: str | None, payload: dict | None, data: str | None = None) -> bytes | None:
        if payload is None:
            return None
        verbatim = data_verbatim(data)
        response = payload.get("response")
        if isinstance(response, dict) and "model" in response:
            response["model"] = self.model
            response.update(self.response_fields)
            verbatim = False  # the lifecycle events (created, completed): a few per stream, re-encoded
        return sse_encode(data.encode() if verbatim else orjson.dumps(payload), event=name or payload.get("type"))

    def close(self) -> list[bytes]:
        return []  # response.completed came from the provider


class ResponsesDialect(Dialect):
    # Errors and credentials are OpenAI's, whichever OpenAI API is spoken.

    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        return chat_dialect.upstream_headers(api_key, extra_headers)

    def error_body(self, error: GatewayError) -> dict:
        return chat_dialect.error_body(error)

    def stream_error_event(self, error: GatewayError) -> bytes:
        payload = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return sse_encode(orjson.dumps({**payload, "sequence_number": 0}), event="error")

    def upstream_error_message(self, payload) -> str | None:
        return upstream_error_text(payload)

    # Same-dialect relay -------------------------------------------------------------------------

    def prepare_chat(self, body: dict, *, upstream_model: str, stream: bool, max_output_tokens: int | None) -> dict:
        """The client's body, passed through with our model name and the tier's output cap."""
        out = dict(body)
        out["model"] = upstream_model
        if max_output_tokens is not None:
            asked = out.get("max_output_tokens")
            if not isinstance(asked, int) or asked > max_output_tokens:
                out["max_output_tokens"] = max_output_tokens
        return out

    def stream_passthrough(self, *, model: str, include_usage: bool) -> ResponsesPassthrough:
        return ResponsesPassthrough(model=model)

    def response_usage(self, data: dict) -> Usage | None:
        return _usage(data.get("usage"))

    def response_text(self, data: dict) -> str:
        return self.parse_response(data).text()

    # Facing a client ----------------------------------------------------------------------------

    def parse_request(self, body: dict) -> ChatRequest:
        """A checked /v1/responses body -> canonical; what has no counterpart (built-in tools, stored
        items, file inputs) is refused with a 400 naming it."""
        request = ChatRequest(messages=[])
        # Tools first: a call of a namespaced tool in the input is renamed as its definition is.
        _tools_in(array_field(body, "tools"), request)
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            request.system.append(Text(instructions))
        raw = body.get("input")
        _input_in(raw if isinstance(raw, str) and raw else object_items(body, "input"), request)
        max_tokens = body.get("max_output_tokens")
        request.max_tokens = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(request, name, value)
        request.stream = bool(body.get("stream"))
        request.tool_choice = _tool_choice_in(body.get("tool_choice"), request)
        if isinstance(body.get("parallel_tool_calls"), bool):
            request.parallel_tool_calls = body["parallel_tool_calls"]
        user = body.get("safety_identifier") or body.get("user")
        if isinstance(user, str):
            request.user = user
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
        if isinstance(effort, str) and effort != "none":
            request.reasoning_effort = effort
        request.output_format = _output_format_in(body.get("text"))
        return request

    def render_response(self, response: ChatResponse, *, model: str) -> dict:
        output: list[dict] = []
        thinking = "".join(p.text for p in response.parts if isinstance(p, Thinking))
        if thinking:
            output.append(_reasoning_item(_new_id("rs_"), thinking))
        text = "".join(p.text for p in response.parts if isinstance(p, Text))
        if text:
            output.append(_message_item(_new_id("msg_"), text, "completed"))
        for call in (p for p in response.parts if isinstance(p, ToolCall)):
            output.append(_function_call_item(_new_id("fc_"), call, "completed"))
        status, incomplete = _status(response.finish_reason)
        return _response_object(
            response_id=_response_id(response.id),
            created_at=int(time.time()),
            model=model,
            status=status,
            output=output,
            usage=_usage_body(response.usage),
            incomplete_details=incomplete,
        )

    def stream_renderer(
        self, *, model: str, include_usage: bool, prompt_estimate: int | None = None
    ) -> ResponsesStreamRenderer:
        return ResponsesStreamRenderer(model=model)

    # Facing a provider --------------------------------------------------------------------------

    def build_request(
        self, request: ChatRequest, *, upstream_model: str, stream: bool, max_output_tokens: int | None
    ) -> dict:
        if request.choices > 1:
            raise bad_request(
                f"'n' is {request.choices}, but this model's provider answers one choice per request", param="n"
            )
        # Nothing the gateway sends is ever read back by id, so the provider need not keep it.
        out: dict = {"model": upstream_model, "input": _input_out(request.messages), "store": False}
        system = "\n\n".join(part.text for part in request.system if part.text)
        if system:
            out["instructions"] = system
        max_tokens = request.max_tokens
        if max_output_tokens is not None:
            max_tokens = min(max_tokens, max_output_tokens) if max_tokens else max_output_tokens
        if max_tokens:
            out["max_output_tokens"] = max_tokens
        if request.temperature is not None:
            out["temperature"] = request.temperature
        if request.top_p is not None:
            out["top_p"] = request.top_p
        if request.tools:
            out["tools"] = [
                {
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters or dict(_EMPTY_SCHEMA),
                }
                for tool in request.tools
            ]
            choice = request.tool_choice
            if choice is not None:
                out["tool_choice"] = {"type": "function", "name": choice.name} if choice.mode == "tool" else choice.mode
            if request.parallel_tool_calls is not None:
                out["parallel_tool_calls"] = request.parallel_tool_calls
        if request.user:
            out["user"] = request.user
        effort = request.reasoning_effort or (
            effort_for_budget(request.thinking_budget) if request.thinking_budget else None
        )
        if effort:
            out["reasoning"] = {"effort": effort}
        spec = request.output_format
        if spec is not None:
            if spec["type"] == "json_object":
                out["text"] = {"format": {"type": "json_object"}}
            else:
                schema = {"type": "json_schema", "name": spec.get("name") or "output", "schema": spec["schema"]}
                out["text"] = {"format": schema}
        if stream:
            out["stream"] = True
        return out

    def parse_response(self, data: dict) -> ChatResponse:
        parts: list[Part] = []
        for item in array_of(data.get("output"), "output"):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "reasoning":
                pieces = array_of(item.get("summary"), "output[].summary") + array_of(
                    item.get("content"), "output[].content"
                )
                texts = [piece.get("text") for piece in pieces if isinstance(piece, dict)]
                text = "".join(t for t in texts if isinstance(t, str))
                if text:
                    parts.append(Thinking(text))
            elif kind == "message":
                for part in array_of(item.get("content"), "output[].content"):
                    if isinstance(part, dict):
                        text = part.get("text", part.get("refusal"))
                        if isinstance(text, str) and text:
                            parts.append(Text(text))
            elif kind == "function_call":
                call_id = text_of(item.get("call_id"), "output[].call_id") or ""
                name = text_of(item.get("name"), "output[].name") or ""
                arguments = text_of(item.get("arguments"), "output[].arguments") or ""
                parts.append(ToolCall(call_id, name, arguments, text_of(item.get("namespace"), "output[].namespace")))
        response_id = data.get("id")
        return ChatResponse(
            id=response_id if isinstance(response_id, str) else "",
            parts=parts,
            finish_reason=_finish_reason(data),
            usage=self.response_usage(data),
        )

    def stream_parser(self) -> ResponsesStreamParser:
        return ResponsesStreamParser()


responses = register(ResponsesDialect(name="responses", paths={"chat": "/responses", "models": "/models"}))
