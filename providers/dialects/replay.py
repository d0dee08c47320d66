"""A complete answer kept in the canonical model, to be replayed later in any dialect and either mode: the
response cache stores one, and renders it per request.

An answer is the list of its content events (text, thinking and tool-call deltas, as they streamed, then its
Finish) plus its usage. A streamed answer keeps its own chunks; a complete (non-streamed) one is cut into
word-sized chunks. Pure: no I/O, no settings.
"""

import hashlib
import re
from dataclasses import dataclass, replace

import orjson

from providers.dialects.canonical import (
    ChatRequest,
    ChatResponse,
    Finish,
    StreamEvent,
    Text,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageReport,
)

# Body fields that change an answer but have no place in the canonical request; part of the fingerprint when
# sent. `stream`, `user`, `metadata`, `store` and the like never are: they do not change what the model writes.
SAMPLING_EXTRAS = (
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "top_k",
    "logit_bias",
    "logprobs",
    "top_logprobs",
)

# Content events as stored: a one-letter tag, then the fields.
_TEXT, _THINKING, _TOOL, _FINISH = "t", "r", "c", "f"


def request_fingerprint(request: ChatRequest, *, model: str, body: dict) -> str:
    """The SHA-256 (hex) of what decides an answer: the model that serves it, the canonical request (messages,
    system, tools, sampling, output format; not `stream` or `user`), and SAMPLING_EXTRAS of the client's body.
    The same conversation sent as Chat Completions, Messages or Responses has the same fingerprint."""
    canonical = replace(request, stream=False, user=None)
    extras = {name: body[name] for name in SAMPLING_EXTRAS if body.get(name) is not None}
    payload = orjson.dumps(
        {"model": model, "request": canonical, "extras": extras},
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return hashlib.sha256(payload).hexdigest()


@dataclass(slots=True)
class Answer:
    """A complete answer: its content events in order (ending with its Finish) and what it was billed."""

    events: list[StreamEvent]
    usage: Usage
    # The usage is the gateway's count (the provider reported none).
    estimated: bool = False

    def stream_events(self) -> list[StreamEvent]:
        """The events a stream renderer replays: the usage first (a format that names the prompt's tokens at the
        start has them there), then the content and the finish."""
        usage = self.usage
        report = UsageReport(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            estimated=self.estimated,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        return [report, *self.events]

    def response(self) -> ChatResponse:
        """The answer as one complete reply (a fresh id: the renderer makes one in the client's style)."""
        parts: list = []
        tools: dict[int, ToolCall] = {}
        finish: Finish | None = None
        for event in self.events:
            match event:
                case TextDelta(text=text):
                    if parts and isinstance(parts[-1], Text):
                        parts[-1].text += text
                    else:
                        parts.append(Text(text))
                case ThinkingDelta(text=text, signature=signature):
                    if not (parts and isinstance(parts[-1], Thinking)):
                        parts.append(Thinking(""))
                    parts[-1].text += text
                    if signature:
                        parts[-1].signature = signature
                case ToolCallDelta(index=index):
                    call = tools.get(index)
                    if call is None:
                        call = tools[index] = ToolCall(event.id or "", event.name or "", "", event.namespace)
                        parts.append(call)
                    call.arguments += event.arguments
                case Finish():
                    finish = event
        return ChatResponse(
            id="",
            parts=parts,
            finish_reason=finish.reason if finish else None,
            usage=self.usage,
            stop_sequence=finish.stop_sequence if finish else None,
        )


# A word and the spaces after it: a complete answer replays as a stream of about a token per chunk.
_WORD = re.compile(r"\s*\S+\s*|\s+")


def answer_events(reply: ChatResponse) -> list[StreamEvent]:
    """The content events of a complete reply (cut into word-sized chunks) and its finish."""
    events: list[StreamEvent] = []
    tool_index = 0
    for part in reply.parts:
        if isinstance(part, Text):
            events.extend(TextDelta(word) for word in _WORD.findall(part.text))
        elif isinstance(part, Thinking):
            events.extend(ThinkingDelta(word) for word in _WORD.findall(part.text))
            if part.signature:
                events.append(ThinkingDelta("", part.signature))
        elif isinstance(part, ToolCall):
            events.append(ToolCallDelta(tool_index, part.id, part.name, part.arguments, part.namespace))
            tool_index += 1
    events.append(Finish(reply.finish_reason or "stop", reply.stop_sequence))
    return events


def content_event(event: StreamEvent) -> bool:
    """Whether a streamed event is part of what an Answer keeps (usage, start and end are kept apart)."""
    return isinstance(event, TextDelta | ThinkingDelta | ToolCallDelta | Finish)


def answer_encode(answer: Answer) -> bytes:
    rows: list[list] = []
    for event in answer.events:
        match event:
            case TextDelta(text=text):
                rows.append([_TEXT, text])
            case ThinkingDelta(text=text, signature=signature):
                rows.append([_THINKING, text, signature])
            case ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments, namespace=namespace):
                rows.append([_TOOL, index, call_id, name, arguments, namespace])
            case Finish(reason=reason, stop_sequence=stop_sequence):
                rows.append([_FINISH, reason, stop_sequence])
    usage = answer.usage
    counts = [
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    ]
    return orjson.dumps({"events": rows, "usage": counts, "estimated": answer.estimated})


class AnswerUnreadable(ValueError):
    """Stored bytes that are not an encoded Answer (another version wrote them, or they were damaged)."""


def answer_decode(data: bytes) -> Answer:
    try:
        stored = orjson.loads(data)
        events: list[StreamEvent] = []
        for row in stored["events"]:
            tag = row[0]
            if tag == _TEXT:
                events.append(TextDelta(row[1]))
            elif tag == _THINKING:
                events.append(ThinkingDelta(row[1], row[2]))
            elif tag == _TOOL:
                # Entries stored before namespaces were kept have five fields.
                events.append(ToolCallDelta(row[1], row[2], row[3], row[4], row[5] if len(row) > 5 else None))
            elif tag == _FINISH:
                events.append(Finish(row[1], row[2]))
            else:
                raise AnswerUnreadable(f"unknown event tag {tag!r}")
        usage = Usage(*(None if count is None else int(count) for count in stored["usage"]))
        return Answer(events, usage, bool(stored["estimated"]))
    except (orjson.JSONDecodeError, LookupError, TypeError, ValueError) as exc:
        if isinstance(exc, AnswerUnreadable):
            raise
        raise AnswerUnreadable(str(exc)) from None
