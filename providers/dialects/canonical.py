"""The canonical model that sits between dialects: a chat request (messages made of content parts,
tools), a complete reply, and the events of a streamed reply.

Same dialect in and out never touches it; a translation from dialect A to dialect B is A's parser
producing these objects and B's renderer consuming them. Finish reasons use the OpenAI names
("stop", "length", "tool_calls", "content_filter"); tool-call arguments stay JSON text as the
model wrote them, so a stream can carry them in fragments.
"""

import uuid
from dataclasses import dataclass, field

# The largest token count the gateway takes from a provider for one call: far above any model's context
# window (a few million tokens at most), far below the usage columns' limit. A larger report is counted
# as this and flagged (`clamped`), so one broken provider cannot book or charge absurd numbers.
TOKEN_COUNT_MAX = 100_000_000


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The part of prompt_tokens read from a prompt cache.
    cached_tokens: int = 0
    # The part of prompt_tokens written to a prompt cache (Anthropic bills it apart).
    cache_write_tokens: int = 0
    # The part of completion_tokens the model spent reasoning (billed as output, within completion_tokens); None
    # when nobody counted it (the provider reported none and the gateway saw no reasoning text), which is not 0.
    reasoning_tokens: int | None = None
    # A count the provider reported was above TOKEN_COUNT_MAX and is counted as that.
    clamped: bool = False


# Content parts ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """Either inline base64 `data` with its `media_type`, or a `url` the provider fetches."""

    data: str | None = None
    media_type: str | None = None
    url: str | None = None


@dataclass(slots=True)
class Thinking:
    text: str
    signature: str | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text
    # The namespace of a Responses client's tool grouped in one (the provider saw it under a flat name).
    namespace: str | None = None


@dataclass(slots=True)
class ToolResult:
    tool_call_id: str
    content: list[Text | Image] = field(default_factory=list)
    is_error: bool = False


Part = Text | Image | Thinking | ToolCall | ToolResult


@dataclass(slots=True)
class Message:
    role: str  # "user" or "assistant"; tool results are parts of a user message
    parts: list[Part] = field(default_factory=list)


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict = field(default_factory=dict)  # JSON schema of the arguments


@dataclass(slots=True)
class ToolChoice:
    mode: str  # "auto", "none", "required" or "tool"
    name: str | None = None  # the tool, when mode == "tool"


@dataclass(slots=True)
class ChatRequest:
    messages: list[Message]
    system: list[Text] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    # Asks an OpenAI-style provider for repeatable sampling; providers without one ignore it.
    seed: int | None = None
    stream: bool = False
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    # Reasoning asked for, in either dialect's terms: OpenAI's effort or Anthropic's thinking budget.
    reasoning_effort: str | None = None
    thinking_budget: int | None = None
    # A structured-output request: {"type": "json_schema", "schema": ..., "name": ...} or {"type": "json_object"}.
    output_format: dict | None = None
    # Alternative answers asked for (OpenAI's n).
    choices: int = 1
    # Built-in tools the client's own API offers (web_search, file_search, ...) as (where, type): a provider that
    # gets the request translated has none of them, so they are dropped or refused (the model's unsupported_tools).
    builtin_tools: list[tuple[str, str]] = field(default_factory=list)
    # Tools a Responses client grouped in namespaces, under the flat names providers see: flat -> (namespace, name).
    namespaced_tools: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(slots=True)
class ChatResponse:
    id: str
    parts: list[Part]  # Text, Thinking and ToolCall
    finish_reason: str | None = None
    usage: Usage | None = None
    stop_sequence: str | None = None

    def text(self) -> str:
        """Everything the model wrote, for token estimates when the provider reports no usage."""
        out = []
        for part in self.parts:
            if isinstance(part, Text | Thinking):
                out.append(part.text)
            elif isinstance(part, ToolCall):
                out.append(part.name + part.arguments)
        return "".join(out)


# Stream events ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    id: str


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str = ""
    signature: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """`index` counts tool calls in the reply (0, 1, ...); `id` and `name` come with the first fragment."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    namespace: str | None = None


@dataclass(slots=True)
class UsageReport:
    """Token counts as the provider reports them; None = not in this event (reported elsewhere)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    # The gateway's own count, for a provider that reported none.
    estimated: bool = False
    # Parts of prompt_tokens and completion_tokens, as in Usage.
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # A count above TOKEN_COUNT_MAX was reported and is counted as that.
    clamped: bool = False

    def __post_init__(self) -> None:
        for name in _REPORT_FIELDS:
            value = getattr(self, name)
            if value is not None and value > TOKEN_COUNT_MAX:
                setattr(self, name, TOKEN_COUNT_MAX)
                self.clamped = True

    def usage(self) -> Usage:
        """The counts as a Usage, those not reported as 0 (the reasoning part as None: not counted)."""
        return Usage(
            self.prompt_tokens or 0,
            self.completion_tokens or 0,
            self.cached_tokens or 0,
            self.cache_write_tokens or 0,
            self.reasoning_tokens,
            self.clamped,
        )

    def merge(self, event: "UsageReport") -> None:
        """Keep what `event` reports, and the last known value of each count it leaves out."""
        for name in _REPORT_FIELDS:
            value = getattr(event, name)
            if value is not None:
                setattr(self, name, value)
        self.estimated = event.estimated
        self.clamped = self.clamped or event.clamped


_REPORT_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")


@dataclass(slots=True)
class Finish:
    reason: str
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    message: str
    kind: str | None = None


@dataclass(slots=True)
class End:
    """The provider said the stream is complete ([DONE], message_stop)."""


StreamEvent = Start | TextDelta | ThinkingDelta | ToolCallDelta | UsageReport | Finish | StreamError | End


# Reasoning budgets: OpenAI names an effort, Anthropic a token budget (at least 1024, below max_tokens).
EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}


def effort_for_budget(budget: int) -> str:
    if budget <= EFFORT_BUDGETS["low"]:
        return "low"
    return "medium" if budget <= EFFORT_BUDGETS["medium"] else "high"


def budget_for(request: "ChatRequest") -> int | None:
    if request.thinking_budget:
        return request.thinking_budget
    return EFFORT_BUDGETS.get(request.reasoning_effort or "")


def id_in_style(value: str | None, prefix: str, foreign: str) -> str:
    """A message id in the client's own dialect style (`msg_...` / `chatcmpl-...`): ours kept, the other
    dialect's prefix swapped, a bare one prefixed, a missing one made up. Only shown, never sent back;
    tool-call ids, which are, go through providers.dialects.tool_ids."""
    if not value:
        return prefix + uuid.uuid4().hex[:24]
    if value.startswith(prefix):
        return value
    return prefix + (value[len(foreign) :] if value.startswith(foreign) else value)


class MalformedEvent(ValueError):
    """An upstream stream event that is not what its dialect promises (e.g. not JSON)."""


class MalformedValue(MalformedEvent):
    """An upstream reply or event that is JSON, with a member of the wrong type or an impossible value (a
    token count that is a string or negative, an array where an object belongs). Unlike an event that is
    not JSON at all, which a stream skips, it ends the call: its message names the member."""
