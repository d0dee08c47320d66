"""Generated garbage for the fuzz tests: hypothesis strategies for request bodies, raw JSON bytes,
headers and websocket frames, a raw ASGI driver that sends them through the real application in
process, and the checks every answer to garbage must pass.

`GATEWAY_FUZZ_EXAMPLES` sets the number of generated cases per test (`make test` runs a few hundred,
`make fuzz` thousands).
"""

import asyncio
import copy
import logging
import os
import re
from dataclasses import dataclass

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "200"))


def fuzz_settings(examples: int | None = None) -> settings:
    return settings(
        max_examples=examples or FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# JSON values ------------------------------------------------------------------------------------

# Text a JSON encoder can write (no lone surrogates), favouring the awkward: NUL, controls, quotes,
# right-to-left marks, astral characters, CRLF.
AWKWARD = ["", " ", "\x00", "\r\n", "\u202e", "'", '"', "\\", "😀", "𝕏", "\ufeff", "%00", "../", "<script>"]
texts = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.builds(
        lambda char, n: char * n, st.sampled_from(["x", "é", "\x00", "😀"]), st.sampled_from([300, 5_000, 70_000])
    ),
)
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12,
)


# Request bodies ---------------------------------------------------------------------------------
# Plausible bodies (the right types, awkward values), then spoiled in a few places: a value anywhere
# in the tree replaced by any JSON value, a key dropped, or a stray key added. A body wrong in one
# place gets past the checks before it and reaches the ones that must catch it.


def fields(required: dict, optional: dict):
    return st.fixed_dictionaries(required, optional=optional)


def _locations(value, path=()):
    """(container, key) for every value in a decoded JSON tree."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield value, key
            yield from _locations(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield value, index
            yield from _locations(child, (*path, index))


@st.composite
def spoiled(draw, bodies, max_spoils: int = 3):
    body = copy.deepcopy(draw(bodies))  # strategies share their sampled values: never change those
    for _ in range(draw(st.integers(min_value=0, max_value=max_spoils))):
        locations = list(_locations(body))
        if not locations:
            break
        container, key = draw(st.sampled_from(locations))
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
        if action == "replace":
            container[key] = draw(json_values)
        elif action == "drop":
            del container[key]
        elif isinstance(container, dict):
            container[draw(texts)] = draw(json_values)
        else:
            container.append(draw(json_values))
    return body


SIZES = st.one_of(st.integers(min_value=1, max_value=64), st.sampled_from([1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1]))
ROLES = st.sampled_from(["user", "user", "assistant", "system", "developer", "tool"])
ANTHROPIC_ROLES = st.sampled_from(["user", "user", "assistant", "system"])
SCHEMA = st.just({"type": "object", "properties": {"city": {"type": "string"}}})
ARGUMENTS = st.sampled_from(['{"city": "Paris"}', "{", "[]", "", '{"a": [[[[1]]]]}'])

openai_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {"url": st.sampled_from(["data:image/png;base64,iVBO", "https://x/y.png", "data:,", "data:"])}
            ),
        }
    ),
)
tool_call = st.fixed_dictionaries(
    {
        "id": texts,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": texts, "arguments": ARGUMENTS}),
    }
)
openai_message = st.one_of(
    fields({"role": ROLES, "content": st.one_of(texts, st.lists(openai_part, max_size=3))}, {"name": texts}),
    fields(
        {"role": st.just("assistant"), "tool_calls": st.lists(tool_call, min_size=1, max_size=2)},
        {"content": st.none()},
    ),  # fmt: skip
    fields({"role": st.just("tool"), "tool_call_id": texts, "content": texts}, {}),
)
openai_tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": fields({"name": texts}, {"description": texts, "parameters": SCHEMA}),
    }
)


def chat_bodies(models):
    return spoiled(
        fields(
            {"model": models, "messages": st.lists(openai_message, min_size=1, max_size=3)},
            {
                "stream": st.booleans(),
                "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
                "max_tokens": SIZES,
                "max_completion_tokens": SIZES,
                "max_output_tokens": SIZES,
                "n": st.integers(min_value=1, max_value=3),
                "temperature": numbers,
                "top_p": numbers,
                "stop": st.one_of(texts, st.lists(texts, max_size=3)),
                "tools": st.lists(openai_tool, max_size=2),
                "functions": st.lists(fields({"name": texts}, {"parameters": SCHEMA}), max_size=2),
                "tool_choice": st.sampled_from(
                    ["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]
                ),  # noqa: E501
                "response_format": st.sampled_from(
                    [
                        {"type": "json_object"},
                        {"type": "text"},
                        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
                    ]
                ),  # noqa: E501  # fmt: skip
                "reasoning_effort": st.sampled_from(["low", "high", "none", "minimal"]),
                "user": texts,
                "seed": numbers,
            },
        )
    )


anthropic_block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("image"),
            "source": st.sampled_from(
                [
                    {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    {"type": "url", "url": "https://x/y.png"},
                ]
            ),
        }  # fmt: skip
    ),
    st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": texts, "name": texts, "input": st.dictionaries(texts, scalars, max_size=2)}
    ),
    fields(
        {"type": st.just("tool_result"), "tool_use_id": texts},
        {
            "content": st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}))),
            "is_error": st.booleans(),
        },  # fmt: skip
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": texts, "signature": texts}),
    st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": texts}),
)
anthropic_message = st.fixed_dictionaries(
    {"role": ANTHROPIC_ROLES, "content": st.one_of(texts, st.lists(anthropic_block, min_size=1, max_size=3))}
)
anthropic_tool = fields({"name": texts, "input_schema": SCHEMA}, {"description": texts})


def messages_bodies(models):
    return spoiled(
        fields(
            {"model": models, "messages": st.lists(anthropic_message, min_size=1, max_size=3), "max_tokens": SIZES},
            {
                "stream": st.booleans(),
                "system": st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}))),
                "stop_sequences": st.lists(texts, max_size=2),
                "tools": st.lists(anthropic_tool, max_size=2),
                "tool_choice": st.one_of(
                    st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "none"])}),
                    st.fixed_dictionaries({"type": st.just("tool"), "name": texts}),
                ),
                "thinking": st.one_of(
                    st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": SIZES}),
                    st.just({"type": "adaptive"}),
                ),
                "output_config": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high", "max"])}),
                "metadata": st.fixed_dictionaries({"user_id": texts}),
                "temperature": numbers,
                "top_k": SIZES,
                "max_completion_tokens": SIZES,
                "max_output_tokens": SIZES,
            },
        )
    )


responses_item = st.one_of(
    st.fixed_dictionaries({"role": ROLES, "content": texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("message"),
            "role": ROLES,
            "content": st.lists(
                st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": texts}),
                max_size=2,
            ),
        }  # fmt: skip
    ),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": texts, "name": texts, "arguments": ARGUMENTS}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": texts, "output": texts}),
    st.fixed_dictionaries({"type": st.just("reasoning"), "summary": st.just([])}),
)


def responses_bodies(models):
    return spoiled(
        fields(
            {"model": models, "input": st.one_of(texts.filter(bool), st.lists(responses_item, min_size=1, max_size=3))},
            {
                "instructions": texts,
                "stream": st.booleans(),
                "max_output_tokens": SIZES,
                "max_tokens": SIZES,
                "tools": st.lists(
                    fields({"type": st.just("function"), "name": texts}, {"parameters": SCHEMA}), max_size=2
                ),
                "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}]),
                "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}}]),
                "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high"])}),
                "user": texts,
            },
        )
    )


def compare_bodies(models, *, frame: bool = False):
    conversation = st.lists(openai_message, min_size=1, max_size=2)
    required = {"type": st.just("chat")} if frame else {}
    if frame:  # a session socket may name the key to pay with
        required["key_id"] = st.one_of(st.none(), numbers)
    shared = fields({**required, "models": st.lists(models, min_size=1, max_size=3, unique=True),
                     "messages": conversation},  # fmt: skip
                    {"max_tokens": SIZES, "stop": texts, "tools": st.lists(openai_tool, max_size=1),
                     "temperature": numbers})  # fmt: skip
    per_model = st.lists(models, min_size=1, max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries(
            {
                **required,
                "models": st.just(names),
                "messages_by_model": st.fixed_dictionaries({name: conversation for name in names}),
            }  # fmt: skip
        )
    )
    return spoiled(st.one_of(shared, per_model))


# Raw bytes: what a JSON encoder would never write -------------------------------------------------

NUMBER_LITERALS = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1E-400", b"-0",
                   b"123456789012345678901234567890123", b"0x10", b"01", b"1.", b".5", b"+1"]  # fmt: skip
_NUMBER = re.compile(rb"(?<=[:\[,])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?=[,\]}])")
_DEEP = "\x00deep\x00"


def nest(value: bytes, depth: int) -> bytes:
    return b"[" * depth + value + b"]" * depth


@dataclass(frozen=True)
class RawMutation:
    """One way of spoiling an encoded body, applied by `raw_bodies`."""

    name: str
    depth: int = 0
    literal: bytes = b""
    cut: int = 0


raw_mutations = st.one_of(
    st.just(RawMutation("none")),
    st.builds(
        lambda d: RawMutation("deep_field", depth=d),
        st.sampled_from([150, 199, 200, 201, 253, 254, 255, 600, 1023, 1024, 1025, 5000]),
    ),  # noqa: E501
    st.builds(lambda d: RawMutation("deep_body", depth=d), st.sampled_from([254, 1023, 1024, 1025])),
    st.builds(lambda lit: RawMutation("number", literal=lit), st.sampled_from(NUMBER_LITERALS)),
    st.builds(
        lambda lit: RawMutation("duplicate_key", literal=lit),
        st.sampled_from([b"1", b"null", b'"x"', b"[]", b"{}", b'"sim-fast"']),
    ),  # noqa: E501
    st.builds(lambda cut: RawMutation("truncate", cut=cut), st.integers(min_value=1, max_value=200)),
    st.builds(
        lambda lit: RawMutation("bytes", literal=lit),
        st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\\ud800"]),
    ),  # noqa: E501
    st.just(RawMutation("bom")),
    st.just(RawMutation("not_object")),
)


def raw_body(body: dict, mutation: RawMutation) -> bytes:
    raw = orjson.dumps(body)
    match mutation.name:
        case "deep_field":  # one value somewhere in the tree nested `depth` levels deeper
            locations = list(_locations(body))
            if not locations:
                return b'{"messages":' + nest(b"1", mutation.depth) + b"}"
            container, key = locations[mutation.cut % len(locations)]
            value, container[key] = container[key], _DEEP
            raw = orjson.dumps(body)
            container[key] = value
            return raw.replace(orjson.dumps(_DEEP), nest(orjson.dumps(value), mutation.depth), 1)
        case "deep_body":  # a stray field nested `depth` levels deep
            return raw[:-1] + (b"," if len(raw) > 2 else b"") + b'"extra":' + nest(b"0", mutation.depth) + b"}"
        case "number":  # a number that JSON (or a 64-bit float) cannot carry, in place of every number
            replaced = _NUMBER.sub(mutation.literal, raw)
            return replaced if replaced != raw else raw[:-1] + b',"max_tokens":' + mutation.literal + b"}"
        case "duplicate_key":  # the same key twice: the last one wins in orjson, the first in others
            return b'{"model":' + mutation.literal + b"," + raw[1:] if raw != b"{}" else b'{"a":1,"a":2}'
        case "truncate":
            return raw[: max(0, len(raw) - mutation.cut)]
        case "bytes":
            middle = len(raw) // 2
            return raw[:middle] + mutation.literal + raw[middle:]
        case "bom":
            return b"\xef\xbb\xbf" + raw
        case "not_object":
            return b"[" + raw + b"]"
    return raw


# Headers ------------------------------------------------------------------------------------------

header_values = st.one_of(
    st.sampled_from(
        [
            b"",
            b"Bearer",
            b"Bearer ",
            b"bearer sk-gw-",
            b"Basic Zm9vOmJhcg==",
            b"Bearer \x00",
            b"Bearer sk-gw-\r\nX-Injected: 1",
            b"Bearer sk-gw-\xc3\xa9\xe2\x82\xac",
            b"Bearer \xff\xfe",
            b"Bearer sk-gw-" + b"a" * 70_000,
            b"Bearer " + "\u0416".encode() * 100,
        ]
    ),  # fmt: skip
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
header_names = st.sampled_from([b"authorization", b"x-api-key", b"anthropic-version", b"anthropic-beta",
                                b"content-type", b"content-length", b"x-request-id", b"origin", b"accept",
                                b"x-\xff", b"x-" + b"n" * 5000])  # fmt: skip
headers = st.lists(st.tuples(header_names, header_values), max_size=3)


# The in-process driver ----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


async def asgi_request(
    app, method: str, path: str, *, body: bytes = b"", headers=(), query: bytes = b"", timeout: float = 30.0
) -> Answer:
    """One HTTP request through the ASGI application itself, headers as raw bytes (anything a proxy
    might let through), the whole answer read, streamed or not."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    requested = asyncio.Event()
    finished = asyncio.Event()

    async def receive():
        if not requested.is_set():
            requested.set()
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    messages = []

    async def send(message):
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    try:
        async with asyncio.timeout(timeout):
            await app(scope, receive, send)
    finally:
        finished.set()
    start = next(m for m in messages if m["type"] == "http.response.start")
    answer_headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in start["headers"]}
    chunks = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return Answer(start["status"], answer_headers, chunks)


# Routing data ---------------------------------------------------------------------------------------

FUZZ_MODELS = ["fz-oa", "fz-an", "fz-rs"]
# The model a generated body names: one of ours (twice as likely) or one nobody has.
MODEL_NAMES = st.sampled_from([*FUZZ_MODELS, *FUZZ_MODELS, "fz-unknown"])


def fuzz_routes_create(simulator, *, user=None) -> str:
    """One model per provider dialect, all on the simulator (so a body sent to a model of the other
    dialect is translated), and a key whose tier admission computes with but garbage never exhausts."""
    from tests.support.data import key_create, model_create, provider_create

    openai_provider = provider_create("fz-openai", simulator.openai_base)
    anthropic_provider = provider_create("fz-anthropic", simulator.anthropic_base, dialect="anthropic")
    responses_provider = provider_create("fz-responses", simulator.openai_base, dialect="responses")
    model_create("fz-oa", [(openai_provider, "sim-echo?tokens=3", 0)])
    model_create("fz-an", [(anthropic_provider, "sim-echo?tokens=3", 0)])
    model_create("fz-rs", [(responses_provider, "sim-echo?tokens=3", 0)])
    return key_create(
        "fuzz", user=user, tpm=2_000_000_000, daily_tokens=10**15, max_output_tokens=64, max_compare_models=3
    )


# What every answer to garbage must be -----------------------------------------------------------

ERROR_BODY_MAX = 4096


def assert_clean_answer(answer: Answer, dialect: str) -> None:
    """No 5xx; a 4xx is a short JSON error in the path's dialect that says what is wrong; a 2xx is
    JSON or an event stream. Never HTML, never a traceback."""
    assert answer.status < 500, (answer.status, answer.body[:2000])
    assert "text/html" not in answer.content_type, answer.body[:500]
    assert b"Traceback" not in answer.body
    if answer.status < 400:
        assert answer.content_type.startswith(("application/json", "text/event-stream")), answer.content_type
        return
    assert answer.content_type.startswith("application/json"), (answer.status, answer.content_type, answer.body[:300])
    assert len(answer.body) <= ERROR_BODY_MAX, (answer.status, len(answer.body), answer.body[:300])
    assert_error_shape(orjson.loads(answer.body), dialect)


def assert_error_shape(payload, dialect: str) -> None:
    if dialect == "anthropic":
        assert payload["type"] == "error", payload
        error = payload["error"]
        assert set(error) >= {"type", "message"}, payload
        assert error["type"] in ANTHROPIC_ERROR_TYPES, payload
    else:
        error = payload["error"]
        assert set(error) >= {"message", "type", "param", "code"}, payload
        assert isinstance(error["type"], str) and error["type"], payload
    assert isinstance(error["message"], str) and error["message"].strip(), payload


ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
}


class ErrorLog(logging.Handler):
    """Attached to the root logger of the test process: what the in-process gateway logged at ERROR
    or with a traceback since the last check."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def clear(self) -> None:
        """Forget what an earlier (failed) example left, before the next one runs."""
        self.records = []

    def check(self) -> None:
        records, self.records = self.records, []
        assert not records, [self.format(record) for record in records]


class LogTail:
    """The part of a gateway process's log written since the last look."""

    def __init__(self, gateway) -> None:
        self.path = gateway.log_path
        self.offset = self.path.stat().st_size

    def new(self) -> str:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read()
        self.offset += len(text)
        return text.decode(errors="replace")


def assert_clean_log(text: str) -> None:
    assert "Traceback" not in text, text[-5000:]
