"""An upstream LLM provider simulator: a plain ASGI app speaking the OpenAI (Chat Completions and
Responses) and Anthropic wire formats.

It writes deterministic text at a configurable pace and fails on demand, so integration tests and
benchmarks drive the gateway over real HTTP. It is also the "direct upstream" baseline in benchmarks,
so the request path stays small: no framework, orjson, one task per request at most.

Behaviour options (see OPTION_NAMES) come from three places, later ones overriding earlier ones:
a query string after `?` in the model name (`sim-echo?tokens=20&interval_ms=100`), the
`x-sim-options` request header, and the global config set through the control API.

Control API (no auth): `GET /_sim/health`, `GET /_sim/requests?model=&path=&since_id=`,
`POST /_sim/reset`, `GET|POST|DELETE /_sim/config`.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import random
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson

OPTION_NAMES = (
    "tokens",  # number of tokens to generate (capped by max_tokens / max_completion_tokens)
    "ttft_ms",  # delay before the first body byte (non-stream: before the response)
    "interval_ms",  # delay between token events (non-stream: adds the whole generation time)
    "fail",  # answer at once with this HTTP status and an error body
    "fail_times",  # apply the fault options only to the first K requests with the same options
    "hang",  # accept the request and never answer; wait for the client to go away
    "drop_after",  # stream k token events, then abort the connection
    "malformed_after",  # after k token events, send one event that is not JSON, then go on
    "hang_after",  # stream k token events, then send nothing more and keep the connection open
    "long_line",  # after the first token event, send one SSE data line of this many bytes, then go on
    "invalid_json",  # non-stream: answer 200 with a JSON content type and a body cut in half (not JSON)
    "token_bytes",  # pad each generated token with "x" to this many characters (large bodies and streams)
    "no_usage",  # leave usage out everywhere
    "echo",  # the answer is the last user message, word by word
    "reasoning",  # stream this many reasoning ("thinking") tokens before the answer
    "cached",  # report this many of the prompt tokens as read from a prompt cache
    "cache_write",  # report this many of the other prompt tokens as written to a prompt cache
    "tool",  # call the offered tool with this name instead of the first one
    "tool_args",  # the tool call's arguments: a JSON object (default {"location": "Paris"})
    "tool_id",  # the tool call's id, as it is (default a fresh `call_...` or `toolu_...` one)
)
TEXT_OPTIONS = ("tool", "tool_args", "tool_id")
FAULT_OPTIONS = ("fail", "hang", "drop_after", "malformed_after", "hang_after", "long_line", "invalid_json")
LONG_LINE_PIECE = 64 * 1024
DEFAULT_TOKENS = 12
MAX_CHOICES = 16
REQUEST_LOG_SIZE = 5000
MODEL_IDS = ("sim-echo", "sim-mini", "sim-large", "sim-claude")
MODEL_CREATED = 1_700_000_000
VOCABULARY = tuple(
    " " + word
    for word in (
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
        "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
        "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
        "pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim"
    ).split()
)
TOOL_ARGUMENT_PIECES = ('{"', "location", '": "', "Paris", '"}')
WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
MALFORMED_EVENT = b"data: {not json\n\n"
DONE_EVENT = b"data: [DONE]\n\n"

OPENAI_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    429: ("requests", "rate_limit_exceeded"),
}
ANTHROPIC_ERROR_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class OptionError(ValueError):
    """An option name or value the simulator does not understand."""


class ConnectionDrop(Exception):
    """Raised after the response started so the server aborts the connection (`drop_after`)."""


class _HideConnectionDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDrop))


def options_parse(text: str) -> dict:
    """Parse `tokens=20&interval_ms=100` into validated options."""
    return options_validate(dict(parse_qsl(text, keep_blank_values=True)))


def options_validate(raw: dict) -> dict:
    """Integer options as ints; `tool` as a name and `tool_args` as a dict (JSON text or, in the config, an object)."""
    options = {}
    for name, value in raw.items():
        if name not in OPTION_NAMES:
            raise OptionError(f"unknown simulator option {name!r}; known: {', '.join(OPTION_NAMES)}")
        if name in TEXT_OPTIONS:
            options[name] = _text_option(name, value)
            continue
        try:
            options[name] = int(value)
        except (TypeError, ValueError):
            raise OptionError(f"simulator option {name!r} needs an integer, got {value!r}") from None
    if options.get("fail") and not 400 <= options["fail"] <= 599:
        raise OptionError(f"simulator option 'fail' needs an HTTP error status (400-599), got {options['fail']}")
    return options


def _text_option(name: str, value):
    if name in ("tool", "tool_id"):
        if not isinstance(value, str) or not value:
            raise OptionError(f"simulator option {name!r} needs a non-empty text, got {value!r}")
        return value
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise OptionError("simulator option 'tool_args' needs a JSON object")
    return value


EMBEDDING_DIMENSIONS = 64


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text's hash: deterministic, different for different texts."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    return [round(value / norm, 6) for value in raw]


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return " ".join(p if isinstance(p, str) else str(p) for p in prompt)
    return ""


def message_text(message) -> str:
    """The plain text of one message (string content or its text parts)."""
    if not isinstance(message, dict):
        return ""
    return content_text(message.get("content"))


def content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def prompt_token_count(messages: list, system) -> int:
    count = sum(len(message_text(message).split()) + 3 for message in messages)
    if system:
        count += len(content_text(system).split()) + 3
    return max(count, 1)


def last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def tool_to_call(body: dict, dialect: str, options: dict | None = None) -> str | None:
    """The tool name to call: when tools are offered and the conversation ends with a user asking about weather.

    The first offered tool, or the one named by the `tool` option (no call when it is not offered). Trailing
    system-role messages are skipped: agents such as Claude Code append their notes after the user's turn.
    """
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    messages = body["messages"]
    last = next((m for m in reversed(messages) if not (isinstance(m, dict) and m.get("role") == "system")), None)
    if not isinstance(last, dict) or last.get("role") != "user" or not WEATHER.search(message_text(last)):
        return None
    names = [_tool_name(tool, dialect) for tool in tools]
    wanted = (options or {}).get("tool")
    if wanted is not None:
        return wanted if wanted in names else None
    return names[0]


def responses_messages(items) -> list:
    """A Responses input as chat messages, enough to plan the answer: message items keep their role
    and text, tool calls and their outputs become assistant and tool turns."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        return []
    messages = []
    for item in items:
        if not isinstance(item, dict):
            messages.append(item)
        elif item.get("type", "message") == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [
                    {"type": "text", "text": part["text"]}
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                ]
            messages.append({"role": item.get("role"), "content": content})
        elif item.get("type") == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output") or "")})
        else:
            messages.append({"role": "assistant", "content": ""})
    return messages


def _tool_name(tool, dialect: str) -> str | None:
    if not isinstance(tool, dict):
        return None
    if dialect == "openai":
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    else:
        name = tool.get("name")
    return name if isinstance(name, str) and name else None


def tool_argument_pieces(options: dict) -> list[str]:
    """The arguments JSON in the pieces a stream sends (a few characters each, like model tokens)."""
    if "tool_args" not in options:
        return list(TOOL_ARGUMENT_PIECES)
    text = orjson.dumps(options["tool_args"]).decode()
    return [text[start : start + 8] for start in range(0, len(text), 8)]


@dataclass(slots=True)
class Completion:
    """What one request will produce: the tokens of each choice and why generation stopped."""

    choices: list[list[str]]
    finish: str  # "stop", "length" or "tool"
    tool_name: str | None
    prompt_tokens: int
    # Reasoning tokens written before the answer (first choice only); counted as completion tokens.
    reasoning: list[str] = field(default_factory=list)
    cached_tokens: int = 0
    # Prompt tokens written to a prompt cache (apart from those read from it).
    cache_write_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.choices) + len(self.reasoning)


def completion_plan(
    *, model: str, messages: list, system, options: dict, cap: int | None, n: int, tool_name: str | None
) -> Completion:
    prompt_tokens = prompt_token_count(messages, system)
    if tool_name:
        plan = Completion([tool_argument_pieces(options) for _ in range(n)], "tool", tool_name, prompt_tokens)
        plan.cached_tokens, plan.cache_write_tokens = _prompt_cache(options, prompt_tokens)
        return plan
    if options.get("echo"):
        words = last_user_text(messages).split()
        echoed = [word if index == 0 else " " + word for index, word in enumerate(words)]
        choices = [list(echoed) for _ in range(n)]
    else:
        count = max(options.get("tokens", DEFAULT_TOKENS), 0)
        canonical = orjson.dumps([model.partition("?")[0], system, messages], option=orjson.OPT_SORT_KEYS)
        seed = int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big")
        choices = [random.Random(seed + index).choices(VOCABULARY, k=count) for index in range(n)]
    if options.get("token_bytes"):
        width = options["token_bytes"]
        choices = [[token + "x" * (width - len(token)) for token in tokens] for tokens in choices]
    finish = "stop"
    if cap is not None and any(len(tokens) > cap for tokens in choices):
        choices = [tokens[: max(cap, 0)] for tokens in choices]
        finish = "length"
    reasoning = [f" step{index + 1}" for index in range(max(options.get("reasoning", 0), 0))]
    cached, written = _prompt_cache(options, prompt_tokens)
    return Completion(choices, finish, None, prompt_tokens, reasoning, cached, written)


def _prompt_cache(options: dict, prompt_tokens: int) -> tuple[int, int]:
    """(cache reads, cache writes) of the prompt: never more than the prompt between them."""
    cached = min(max(options.get("cached", 0), 0), prompt_tokens)
    return cached, min(max(options.get("cache_write", 0), 0), prompt_tokens - cached)


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _tool_call_id(options: dict, prefix: str) -> str:
    return options.get("tool_id") or _new_id(prefix)


def _json_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_YIELD_EVERY_EVENTS = 64


class Exchange:
    """One HTTP request/response: writes the response and keeps its request-log record up to date."""

    __slots__ = ("send", "receive", "record", "completing", "invalid_json")

    def __init__(self, send, receive, record: dict) -> None:
        self.send = send
        self.receive = receive
        self.record = record
        self.completing = False
        # `invalid_json`: a successful JSON answer goes out cut in half.
        self.invalid_json = False

    async def start(self, status: int, headers: list) -> None:
        self.record["status"] = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def event(self, data: bytes, *, token: bool = False) -> None:
        record = self.record
        if record["first_byte_at"] is None:
            record["first_byte_at"] = time.time()
        record["events_sent"] += 1
        if token:
            record["tokens_sent"] += 1
        await self.send({"type": "http.response.body", "body": data, "more_body": True})
        if not record["events_sent"] % _YIELD_EVERY_EVENTS:
            # Once the client is gone the server's send returns at once: an unpaced stream must still let
            # the disconnect watcher run, or it "sends" the rest of a huge answer into nothing.
            await asyncio.sleep(0)

    async def end(self) -> None:
        self.completing = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        self.record["finished_at"] = time.time()

    async def json(self, status: int, payload, headers: tuple = ()) -> None:
        body = orjson.dumps(payload)
        if self.invalid_json and status == 200:
            body = body[: len(body) // 2]
        await self.start(
            status,
            [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        )
        self.completing = True
        self.record["first_byte_at"] = time.time()
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self.record["finished_at"] = time.time()


def error_payload(dialect: str, status: int, message: str):
    if dialect == "anthropic":
        kind = ANTHROPIC_ERROR_KINDS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind, code = OPENAI_ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Simulator:
    """The ASGI application; one instance holds the request log, the fail counters and the global config."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.log: deque[dict] = deque(maxlen=REQUEST_LOG_SIZE)
        self.next_id = 1
        self.fail_counters: dict[str, int] = {}
        self.config: dict = {}
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _HideConnectionDrops) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(_HideConnectionDrops())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            if scope["path"].startswith("/_sim/"):
                await self.control(scope, receive, send)
            else:
                await self.upstream(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # The provider API.

    async def upstream(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        headers: dict = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        presented = [
            key
            for key in (headers.get("authorization", "").removeprefix("Bearer ").strip(), headers.get("x-api-key"))
            if key
        ]
        for name in ("authorization", "x-api-key"):
            if name in headers:
                headers[name] = "***"
        key = next((key for key in presented if key == self.api_key), presented[0] if presented else None)
        auth_sha256 = hashlib.sha256(key.encode()).hexdigest() if key else None
        headers["auth_present"], headers["auth_sha256"] = bool(presented), auth_sha256
        record = {
            "id": self.next_id,
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "method": method,
            "model": None,
            "headers": headers,
            "auth_present": bool(presented),
            "auth_sha256": auth_sha256,
            "body": None,
            "stream": False,
            "options": {},
            "started_at": time.time(),
            "first_byte_at": None,
            "finished_at": None,
            "events_sent": 0,
            "tokens_sent": 0,
            "disconnected": False,
            "disconnected_at": None,
            "status": None,
        }
        self.next_id += 1
        self.log.append(record)
        exchange = Exchange(send, receive, record)

        if path == "/v1/messages":
            dialect = "anthropic"
        elif path in ("/v1/chat/completions", "/v1/responses") or "authorization" in headers:
            dialect = "openai"
        else:
            dialect = "anthropic" if "x-api-key" in headers or "anthropic-version" in headers else "openai"

        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._mark_disconnected(record)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break

        if self.api_key is not None and not any(hmac.compare_digest(k, self.api_key) for k in presented):
            message = "invalid x-api-key" if dialect == "anthropic" else "Incorrect API key provided."
            await exchange.json(401, error_payload(dialect, 401, message))
            return

        if path == "/v1/models":
            if method != "GET":
                await exchange.json(405, error_payload(dialect, 405, f"{method} is not allowed on {path}"))
                return
            await self.models(exchange, dialect, headers)
            return
        if path == "/v1/messages/count_tokens":
            await self.count_tokens(exchange, method, chunks)
            return
        if path not in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/completions", "/v1/responses"):
            await exchange.json(404, error_payload(dialect, 404, f"no such endpoint: {method} {path}"))
            return
        kind = {"/v1/embeddings": "embeddings", "/v1/completions": "completions", "/v1/responses": "responses"}.get(
            path, "chat"
        )
        if method != "POST":
            await exchange.json(405, error_payload(dialect, 405, f"{method} is not allowed on {path}"))
            return

        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            await exchange.json(400, error_payload(dialect, 400, "the request body is not valid JSON"))
            return
        record["body"] = body
        if kind == "completions" and isinstance(body, dict):
            # A legacy completion is generated like a chat answer to its prompt.
            body = {**body, "messages": [{"role": "user", "content": _prompt_text(body.get("prompt"))}]}
        if kind == "responses" and isinstance(body, dict):
            # A Responses request is generated like a chat answer to the conversation its input holds.
            body = {**body, "messages": responses_messages(body.get("input"))}
        problem = self._embeddings_problem(body) if kind == "embeddings" else self._request_problem(body, dialect)
        if problem:
            await exchange.json(400, error_payload(dialect, 400, problem))
            return
        model = body["model"]
        record["model"] = model
        record["stream"] = body.get("stream") is True
        try:
            options = self._options(model.partition("?")[2], headers)
        except OptionError as exc:
            await exchange.json(400, error_payload(dialect, 400, str(exc)))
            return
        record["options"] = options
        exchange.invalid_json = bool(options.get("invalid_json"))
        if await self._fault_before_response(exchange, dialect, options):
            return
        if kind == "embeddings":
            await self.embeddings(exchange, body)
            return

        n = body.get("n", 1) if dialect == "openai" else 1
        if kind == "responses":
            cap = body.get("max_output_tokens")
        elif dialect == "openai":
            cap = body.get("max_completion_tokens")
            cap = cap if _json_int(cap) else body.get("max_tokens")
        else:
            cap = body["max_tokens"]
        plan = completion_plan(
            model=model,
            messages=body["messages"],
            system=body.get("system") if dialect == "anthropic" else body.get("instructions"),
            options=options,
            cap=cap if _json_int(cap) else None,
            n=min(n, MAX_CHOICES) if _json_int(n) and n > 1 and kind == "chat" else 1,
            tool_name=tool_to_call(body, "responses" if kind == "responses" else dialect, options),
        )
        if kind == "responses":
            work = self.responses_stream if record["stream"] else self.responses_message
        elif kind == "completions":
            work = self.completion_stream if record["stream"] else self.completion_message
        elif dialect == "openai":
            work = self.openai_stream if record["stream"] else self.openai_message
        else:
            work = self.anthropic_stream if record["stream"] else self.anthropic_message
        if record["stream"] or options.get("ttft_ms") or options.get("interval_ms"):
            await self._until_disconnect(exchange, work(exchange, body, plan, options))
        else:
            await work(exchange, body, plan, options)

    async def count_tokens(self, exchange: Exchange, method: str, chunks: list) -> None:
        """Anthropic's token counting: the same prompt count the simulator's usage reports."""
        if method != "POST":
            await exchange.json(405, error_payload("anthropic", 405, f"{method} is not allowed here"))
            return
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            await exchange.json(400, error_payload("anthropic", 400, "model and messages are required"))
            return
        exchange.record["body"], exchange.record["model"] = body, body["model"]
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        await exchange.json(200, {"input_tokens": prompt_token_count(messages, body.get("system"))})

    @staticmethod
    def _embeddings_problem(body) -> str | None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return "model: a model name is required"
        texts = body.get("input")
        if isinstance(texts, str | list) and texts:
            return None
        return "input: a string, a list of strings or a list of token lists is required"

    async def embeddings(self, exchange: Exchange, body: dict) -> None:
        """Deterministic unit vectors: the same input always gets the same embedding."""
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dimensions = body.get("dimensions") if _json_int(body.get("dimensions")) else EMBEDDING_DIMENSIONS
        data, tokens = [], 0
        for index, item in enumerate(texts):
            text = item if isinstance(item, str) else " ".join(str(t) for t in item) if isinstance(item, list) else ""
            tokens += len(item) if isinstance(item, list) else max(len(text.split()), 1)
            vector = embedding_vector(text, max(1, min(dimensions, 4096)))
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": encoded})
            else:
                data.append({"object": "embedding", "index": index, "embedding": vector})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        exchange.record["tokens_sent"] = 0
        await exchange.json(200, {"object": "list", "data": data, "model": body["model"], "usage": usage})

    @staticmethod
    def _completion_payload(body: dict, choices: list, usage=None) -> dict:
        payload = {
            "id": "cmpl-" + os.urandom(12).hex(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        return payload

    async def completion_message(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        await self._pause_before_body(options, max(len(tokens) for tokens in plan.choices))
        choices = [
            {"text": "".join(tokens), "index": index, "logprobs": None, "finish_reason": plan.finish}
            for index, tokens in enumerate(plan.choices)
        ]
        usage = None if options.get("no_usage") else self._openai_usage(plan)
        exchange.record["tokens_sent"] = plan.completion_tokens
        await exchange.json(200, self._completion_payload(body, choices, usage))

    async def completion_stream(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

        def chunk(text: str, finish=None) -> bytes:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            payload = self._completion_payload(body, [choice])
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        await exchange.start(200, SSE_HEADERS)
        if options.get("ttft_ms"):
            await asyncio.sleep(options["ttft_ms"] / 1000)
        interval = options.get("interval_ms", 0) / 1000
        tokens = plan.choices[0]
        for step, token in enumerate(tokens):
            if step and interval > 0:
                await asyncio.sleep(interval)
            await self._fault_at(exchange, step, len(tokens), options, MALFORMED_EVENT)
            await exchange.event(chunk(token), token=True)
        await exchange.event(chunk("", plan.finish))
        if include_usage and not options.get("no_usage"):
            usage_chunk = {**self._completion_payload(body, []), "usage": self._openai_usage(plan)}
            await exchange.event(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
        await exchange.event(DONE_EVENT)
        await exchange.end()

    def _request_problem(self, body, dialect: str) -> str | None:
        if not isinstance(body, dict):
            return "the request body must be a JSON object"
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model: a model name is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: a non-empty list of messages is required"
        if not all(isinstance(message, dict) for message in messages):
            return "messages: every message must be an object"
        if dialect == "anthropic" and not _json_int(body.get("max_tokens")):
            return "max_tokens: Field required"
        return None

    def _options(self, model_suffix: str, headers: dict) -> dict:
        options = options_parse(model_suffix) if model_suffix else {}
        if headers.get("x-sim-options"):
            options.update(options_parse(headers["x-sim-options"]))
        options.update(self.config)
        if "fail_times" in options:
            key = "&".join(f"{name}={value}" for name, value in sorted(options.items()))
            seen = self.fail_counters.get(key, 0)
            self.fail_counters[key] = seen + 1
            if seen >= options["fail_times"]:
                return {name: value for name, value in options.items() if name not in FAULT_OPTIONS}
            if not any(name in options for name in FAULT_OPTIONS):
                options["fail"] = 500
        return options

    async def _fault_before_response(self, exchange: Exchange, dialect: str, options: dict) -> bool:
        """Answer with an injected failure or hang; True when the request is dealt with."""
        status = options.get("fail")
        if status:
            headers = ((b"retry-after", b"1"),) if status == 429 else ()
            message = f"simulated failure with status {status}"
            await exchange.json(status, error_payload(dialect, status, message), headers)
            return True
        if options.get("hang"):
            await self._until_disconnect(exchange, asyncio.Event().wait())
            return True
        return False

    async def models(self, exchange: Exchange, dialect: str, headers: dict) -> None:
        try:
            options = self._options("", headers)
        except OptionError as exc:
            await exchange.json(400, error_payload(dialect, 400, str(exc)))
            return
        exchange.record["options"] = options
        if await self._fault_before_response(exchange, dialect, options):
            return
        data = [
            {
                "id": model_id,
                "object": "model",
                "created": MODEL_CREATED,
                "owned_by": "simulator",
                "type": "model",
                "display_name": model_id,
                "created_at": "2023-11-14T22:13:20Z",
            }
            for model_id in MODEL_IDS
        ]
        payload = {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
        }
        if options.get("ttft_ms"):
            await self._until_disconnect(exchange, self._delayed_json(exchange, options["ttft_ms"] / 1000, payload))
        else:
            await exchange.json(200, payload)

    async def _delayed_json(self, exchange: Exchange, delay: float, payload) -> None:
        await asyncio.sleep(delay)
        await exchange.json(200, payload)

    async def _until_disconnect(self, exchange: Exchange, work) -> None:
        """Run `work`, cancelling it the moment the client goes away."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(self._watch_disconnect(exchange))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and watcher.result() is False:
                await asyncio.wait((task,))
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            watcher.cancel()
        if not task.cancelled():
            task.result()

    async def _watch_disconnect(self, exchange: Exchange) -> bool:
        while True:
            message = await exchange.receive()
            if message["type"] == "http.disconnect":
                if exchange.completing:
                    return False
                self._mark_disconnected(exchange.record)
                return True

    @staticmethod
    def _mark_disconnected(record: dict) -> None:
        now = time.time()
        record["disconnected"] = True
        record["disconnected_at"] = now
        record["finished_at"] = now

    @staticmethod
    async def _fault_at(exchange: Exchange, step: int, steps: int, options: dict, malformed: bytes) -> None:
        """Inject the mid-stream faults (malformed_after, drop_after, hang_after, long_line) at `step` token events."""
        if "malformed_after" in options and min(options["malformed_after"], steps) == step:
            await exchange.event(malformed)
        if options.get("long_line") and min(1, steps) == step:
            # In pieces, as a network would deliver it: the reader sees the line grow without an end.
            remaining = options["long_line"]
            await exchange.event(b"data: ")
            while remaining > 0:
                piece = min(remaining, LONG_LINE_PIECE)
                await exchange.send({"type": "http.response.body", "body": b"x" * piece, "more_body": True})
                remaining -= piece
            await exchange.send({"type": "http.response.body", "body": b"\n\n", "more_body": True})
        if "hang_after" in options and min(options["hang_after"], steps) == step:
            await asyncio.Event().wait()
        if "drop_after" in options and min(options["drop_after"], steps) == step:
            exchange.record["finished_at"] = time.time()
            raise ConnectionDrop(f"dropped after {step} token events")

    @staticmethod
    async def _pause_before_body(options: dict, steps: int) -> None:
        delay = options.get("ttft_ms", 0) + options.get("interval_ms", 0) * max(steps - 1, 0)
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    async def _drop_without_body(self, exchange: Exchange, content_type: bytes) -> None:
        await exchange.start(200, [(b"content-type", content_type), (b"content-length", b"1024")])
        exchange.record["finished_at"] = time.time()
        raise ConnectionDrop("dropped before the body")

    # OpenAI Chat Completions.

    async def openai_message(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        await self._pause_before_body(options, max(len(tokens) for tokens in plan.choices))
        if "drop_after" in options:
            await self._drop_without_body(exchange, b"application/json")
        choices = []
        for index, tokens in enumerate(plan.choices):
            if plan.tool_name:
                message = {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": _tool_call_id(options, "call_"),
                            "type": "function",
                            "function": {"name": plan.tool_name, "arguments": "".join(tokens)},
                        }
                    ],
                }
            else:
                message = {"role": "assistant", "content": "".join(tokens), "refusal": None}
                if plan.reasoning and index == 0:
                    message["reasoning_content"] = "".join(plan.reasoning)
            finish = "tool_calls" if plan.tool_name else plan.finish
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
        payload = {
            "id": _new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "system_fingerprint": None,
        }
        if not options.get("no_usage"):
            payload["usage"] = self._openai_usage(plan)
        exchange.record["tokens_sent"] = plan.completion_tokens
        await exchange.json(200, payload)

    @staticmethod
    def _openai_usage(plan: Completion) -> dict:
        usage = {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }
        if plan.cached_tokens or plan.cache_write_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
            if plan.cache_write_tokens:
                # Not OpenAI's own (it does not bill writes apart): as OpenRouter reports them.
                usage["prompt_tokens_details"]["cache_write_tokens"] = plan.cache_write_tokens
        if plan.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": len(plan.reasoning)}
        return usage

    @staticmethod
    def _anthropic_input(plan: Completion) -> dict:
        """Anthropic counts cache reads and cache writes apart from input_tokens (thinking is part of
        output_tokens, not counted apart)."""
        usage = {"input_tokens": plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens}
        if plan.cached_tokens:
            usage["cache_read_input_tokens"] = plan.cached_tokens
        if plan.cache_write_tokens:
            usage["cache_creation_input_tokens"] = plan.cache_write_tokens
        return usage

    async def openai_stream(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True
            and not options.get("no_usage")
        )
        head = {
            "id": _new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": None,
        }

        def chunk(choices: list, usage=None) -> bytes:
            payload = {**head, "choices": choices}
            if include_usage:
                payload["usage"] = usage
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        def choice(index: int, delta: dict, finish_reason=None) -> list:
            return [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

        await exchange.start(200, SSE_HEADERS)
        if options.get("ttft_ms"):
            await asyncio.sleep(options["ttft_ms"] / 1000)
        for index in range(len(plan.choices)):
            if plan.tool_name:
                call = {"index": 0, "id": _tool_call_id(options, "call_"), "type": "function"}
                call["function"] = {"name": plan.tool_name, "arguments": ""}
                delta = {"role": "assistant", "content": None, "tool_calls": [call]}
            else:
                delta = {"role": "assistant", "content": ""}
            await exchange.event(chunk(choice(index, delta)))
        steps = max(len(tokens) for tokens in plan.choices)
        interval = options.get("interval_ms", 0) / 1000
        for token in plan.reasoning:
            await exchange.event(chunk(choice(0, {"reasoning_content": token})), token=True)
            if interval > 0:
                await asyncio.sleep(interval)
        for step in range(steps):
            if step and interval > 0:
                await asyncio.sleep(interval)
            await self._fault_at(exchange, step, steps, options, MALFORMED_EVENT)
            for index, tokens in enumerate(plan.choices):
                if step < len(tokens):
                    if plan.tool_name:
                        delta = {"tool_calls": [{"index": 0, "function": {"arguments": tokens[step]}}]}
                    else:
                        delta = {"content": tokens[step]}
                    await exchange.event(chunk(choice(index, delta)), token=True)
        await self._fault_at(exchange, steps, steps, options, MALFORMED_EVENT)
        finish = "tool_calls" if plan.tool_name else plan.finish
        for index in range(len(plan.choices)):
            await exchange.event(chunk(choice(index, {}, finish)))
        if include_usage:
            await exchange.event(chunk([], self._openai_usage(plan)))
        await exchange.event(DONE_EVENT)
        await exchange.end()

    # Anthropic Messages.

    async def anthropic_message(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        tokens = plan.choices[0]
        await self._pause_before_body(options, len(tokens))
        if "drop_after" in options:
            await self._drop_without_body(exchange, b"application/json")
        if plan.tool_name:
            arguments = orjson.loads("".join(tokens))
            tool_id = _tool_call_id(options, "toolu_")
            content = [{"type": "tool_use", "id": tool_id, "name": plan.tool_name, "input": arguments}]
        else:
            content = [{"type": "text", "text": "".join(tokens)}]
        if plan.reasoning:
            content.insert(0, {"type": "thinking", "thinking": "".join(plan.reasoning), "signature": "sim-signature"})
        payload = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": self._anthropic_stop_reason(plan),
            "stop_sequence": None,
        }
        if not options.get("no_usage"):
            payload["usage"] = {**self._anthropic_input(plan), "output_tokens": plan.completion_tokens}
        exchange.record["tokens_sent"] = plan.completion_tokens
        await exchange.json(200, payload)

    @staticmethod
    def _anthropic_stop_reason(plan: Completion) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}[plan.finish]

    async def anthropic_stream(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        def event(name: str, payload: dict) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

        tokens = plan.choices[0]
        usage = not options.get("no_usage")
        message = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if usage:
            message["usage"] = {**self._anthropic_input(plan), "output_tokens": 1}
        if plan.tool_name:
            block = {"type": "tool_use", "id": _tool_call_id(options, "toolu_"), "name": plan.tool_name, "input": {}}
        else:
            block = {"type": "text", "text": ""}

        await exchange.start(200, SSE_HEADERS)
        if options.get("ttft_ms"):
            await asyncio.sleep(options["ttft_ms"] / 1000)
        await exchange.event(event("message_start", {"type": "message_start", "message": message}))
        interval = options.get("interval_ms", 0) / 1000
        index = 0
        if plan.reasoning:
            thinking = {"type": "thinking", "thinking": "", "signature": ""}
            await exchange.event(
                event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": thinking})
            )
            for token in plan.reasoning:
                delta = {"type": "thinking_delta", "thinking": token}
                payload = {"type": "content_block_delta", "index": 0, "delta": delta}
                await exchange.event(event("content_block_delta", payload), token=True)
                if interval > 0:
                    await asyncio.sleep(interval)
            delta = {"type": "signature_delta", "signature": "sim-signature"}
            await exchange.event(
                event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
            await exchange.event(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        await exchange.event(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        await exchange.event(event("ping", {"type": "ping"}))
        malformed = b"event: content_block_delta\n" + MALFORMED_EVENT
        steps = len(tokens)
        for step, token in enumerate(tokens):
            if step and interval > 0:
                await asyncio.sleep(interval)
            await self._fault_at(exchange, step, steps, options, malformed)
            if plan.tool_name:
                delta = {"type": "input_json_delta", "partial_json": token}
            else:
                delta = {"type": "text_delta", "text": token}
            payload = {"type": "content_block_delta", "index": index, "delta": delta}
            await exchange.event(event("content_block_delta", payload), token=True)
        await self._fault_at(exchange, steps, steps, options, malformed)
        await exchange.event(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        payload = {
            "type": "message_delta",
            "delta": {"stop_reason": self._anthropic_stop_reason(plan), "stop_sequence": None},
        }
        if usage:
            payload["usage"] = {"output_tokens": plan.completion_tokens}
        await exchange.event(event("message_delta", payload))
        await exchange.event(event("message_stop", {"type": "message_stop"}))
        await exchange.end()

    # OpenAI Responses.

    @staticmethod
    def _responses_usage(plan: Completion) -> dict:
        details = {"cached_tokens": plan.cached_tokens}
        if plan.cache_write_tokens:
            details["cache_write_tokens"] = plan.cache_write_tokens
        return {
            "input_tokens": plan.prompt_tokens,
            "input_tokens_details": details,
            "output_tokens": plan.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": len(plan.reasoning)},
            "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        }

    def _response(self, body: dict, plan: Completion, options: dict, status: str, output: list) -> dict:
        payload = {
            "id": _new_id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": None,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": None,
            "truncation": "disabled",
            "usage": None,
            "metadata": {},
        }
        if status in ("completed", "incomplete") and not options.get("no_usage"):
            payload["usage"] = self._responses_usage(plan)
        if status == "incomplete":
            payload["incomplete_details"] = {"reason": "max_output_tokens"}
        return payload

    @staticmethod
    def _responses_output(plan: Completion, ids: dict) -> list:
        tokens = plan.choices[0]
        output = []
        if plan.reasoning:
            summary = [{"type": "summary_text", "text": "".join(plan.reasoning)}]
            output.append({"id": ids["reasoning"], "type": "reasoning", "summary": summary})
        if plan.tool_name:
            output.append(
                {
                    "id": ids["item"],
                    "type": "function_call",
                    "call_id": ids["call"],
                    "name": plan.tool_name,
                    "arguments": "".join(tokens),
                    "status": "completed",
                }
            )
        else:
            part = {"type": "output_text", "text": "".join(tokens), "annotations": [], "logprobs": []}
            message = {"id": ids["item"], "type": "message", "role": "assistant", "status": "completed"}
            output.append({**message, "content": [part]})
        return output

    @staticmethod
    def _responses_ids(plan: Completion, options: dict) -> dict:
        return {
            "reasoning": _new_id("rs_"),
            "item": _new_id("fc_" if plan.tool_name else "msg_"),
            "call": _tool_call_id(options, "call_"),
        }

    async def responses_message(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        await self._pause_before_body(options, len(plan.choices[0]))
        if "drop_after" in options:
            await self._drop_without_body(exchange, b"application/json")
        status = "incomplete" if plan.finish == "length" else "completed"
        output = self._responses_output(plan, self._responses_ids(plan, options))
        exchange.record["tokens_sent"] = plan.completion_tokens
        await exchange.json(200, self._response(body, plan, options, status, output))

    async def responses_stream(self, exchange: Exchange, body: dict, plan: Completion, options: dict) -> None:
        sequence = iter(range(1_000_000))

        def event(payload: dict) -> bytes:
            payload["sequence_number"] = next(sequence)
            return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

        tokens = plan.choices[0]
        ids = self._responses_ids(plan, options)
        final = self._responses_output(plan, ids)
        head = self._response(body, plan, options, "in_progress", [])
        await exchange.start(200, SSE_HEADERS)
        if options.get("ttft_ms"):
            await asyncio.sleep(options["ttft_ms"] / 1000)
        await exchange.event(event({"type": "response.created", "response": head}))
        await exchange.event(event({"type": "response.in_progress", "response": head}))
        interval = options.get("interval_ms", 0) / 1000
        index = 0
        if plan.reasoning:
            item = {"id": ids["reasoning"], "type": "reasoning", "summary": []}
            where = {"item_id": ids["reasoning"], "output_index": 0, "summary_index": 0}
            await exchange.event(event({"type": "response.output_item.added", "output_index": 0, "item": item}))
            part = {"type": "summary_text", "text": ""}
            await exchange.event(event({"type": "response.reasoning_summary_part.added", **where, "part": part}))
            for token in plan.reasoning:
                delta = {"type": "response.reasoning_summary_text.delta", **where, "delta": token}
                await exchange.event(event(delta), token=True)
                if interval > 0:
                    await asyncio.sleep(interval)
            text = "".join(plan.reasoning)
            await exchange.event(event({"type": "response.reasoning_summary_text.done", **where, "text": text}))
            part = {"type": "summary_text", "text": text}
            await exchange.event(event({"type": "response.reasoning_summary_part.done", **where, "part": part}))
            await exchange.event(event({"type": "response.output_item.done", "output_index": 0, "item": final[0]}))
            index = 1
        done = final[index]
        where = {"item_id": ids["item"], "output_index": index}
        if plan.tool_name:
            added = {**done, "arguments": "", "status": "in_progress"}
        else:
            added = {**done, "content": [], "status": "in_progress"}
        await exchange.event(event({"type": "response.output_item.added", "output_index": index, "item": added}))
        if not plan.tool_name:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            await exchange.event(
                event({"type": "response.content_part.added", **where, "content_index": 0, "part": part})
            )
        malformed = b"event: response.output_text.delta\n" + MALFORMED_EVENT
        steps = len(tokens)
        for step, token in enumerate(tokens):
            if step and interval > 0:
                await asyncio.sleep(interval)
            await self._fault_at(exchange, step, steps, options, malformed)
            if plan.tool_name:
                delta = {"type": "response.function_call_arguments.delta", **where, "delta": token}
            else:
                delta = {"type": "response.output_text.delta", **where, "content_index": 0, "delta": token}
                delta["logprobs"] = []
            await exchange.event(event(delta), token=True)
        await self._fault_at(exchange, steps, steps, options, malformed)
        if plan.tool_name:
            payload = {"type": "response.function_call_arguments.done", **where, "arguments": done["arguments"]}
            await exchange.event(event(payload))
        else:
            part = done["content"][0]
            payload = {"type": "response.output_text.done", **where, "content_index": 0, "text": part["text"]}
            await exchange.event(event({**payload, "logprobs": []}))
            await exchange.event(
                event({"type": "response.content_part.done", **where, "content_index": 0, "part": part})
            )
        await exchange.event(event({"type": "response.output_item.done", "output_index": index, "item": done}))
        status = "incomplete" if plan.finish == "length" else "completed"
        response = self._response(body, plan, options, status, final)
        response["id"] = head["id"]
        await exchange.event(event({"type": f"response.{status}", "response": response}))
        await exchange.end()

    # The control API.

    async def control(self, scope, receive, send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        status, payload = 200, None
        if path == "/_sim/health" and method == "GET":
            payload = {"ok": True}
        elif path == "/_sim/requests" and method == "GET":
            payload = {"requests": self._requests(dict(parse_qsl(scope["query_string"].decode("latin-1"))))}
        elif path == "/_sim/reset" and method == "POST":
            self.log.clear()
            self.fail_counters.clear()
            payload = {"ok": True}
        elif path == "/_sim/config" and method == "GET":
            payload = self.config
        elif path == "/_sim/config" and method == "DELETE":
            self.config = {}
            self.fail_counters.clear()
            payload = self.config
        elif path == "/_sim/config" and method == "POST":
            try:
                raw = orjson.loads(b"".join(chunks) or b"{}")
                if not isinstance(raw, dict):
                    raise OptionError("the config must be a JSON object of options")
                self.config = options_validate(raw)
                self.fail_counters.clear()
                payload = self.config
            except (orjson.JSONDecodeError, OptionError) as exc:
                status, payload = 400, {"error": str(exc)}
        else:
            status, payload = 404, {"error": f"no such control endpoint: {method} {path}"}
        body = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _requests(self, filters: dict) -> list[dict]:
        records = list(self.log)
        if "model" in filters:
            records = [record for record in records if record["model"] == filters["model"]]
        if "path" in filters:
            records = [record for record in records if record["path"] == filters["path"]]
        if filters.get("since_id", "").isdigit():
            since = int(filters["since_id"])
            records = [record for record in records if record["id"] > since]
        return records


def create_app(*, api_key: str | None = None) -> Simulator:
    return Simulator(api_key=api_key)


def simulator_serve(
    *, host: str = "127.0.0.1", port: int = 9100, api_key: str | None = None, on_ready: Callable[[str], None]
) -> None:
    """Serve the simulator with uvicorn until interrupted; `on_ready` gets the URL once it accepts connections.

    The socket is bound here so that port 0 works: the URL carries the port the kernel picked.
    """
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    config = uvicorn.Config(
        create_app(api_key=api_key),
        loop=loop,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            on_ready(f"http://{url_host}:{bound_port}")
        await task

    with contextlib.closing(sock), asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
