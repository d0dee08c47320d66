"""Generated garbage against the relayed endpoints (chat completions, messages, Responses, compare):
wrong types at every level, huge and empty strings, NUL and other awkward text, JSON nested up to and
past the parser's limit, duplicate keys, numbers no JSON number can hold, spoiled bytes, and garbled
headers. Every answer is a clean 2xx or a short JSON 4xx in the path's dialect naming the problem:
never a 5xx, never HTML, never a traceback in the log.

Each endpoint is fuzzed twice: in process, through the real ASGI application with raw header bytes,
and over loopback HTTP against a gateway process whose upstream is the simulator, so valid-looking
bodies go through the whole relay (translated when client and provider speak different dialects).
"""

import asyncio
import logging
import socket

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigateway.asgi import application
from aigateway.config_watch import config_watch
from providers.upstream import upstream_clients_close
from streaming.relay import background_drain
from tests.support.fuzz import (
    MODEL_NAMES,
    Answer,
    ErrorLog,
    LogTail,
    asgi_request,
    assert_clean_answer,
    assert_clean_log,
    chat_bodies,
    compare_bodies,
    fuzz_routes_create,
    fuzz_settings,
    headers,
    messages_bodies,
    raw_body,
    raw_mutations,
    responses_bodies,
)

pytestmark = pytest.mark.django_db(transaction=True)


# path -> (dialect of its errors, body strategy)
ENDPOINTS = {
    "/v1/chat/completions": ("openai", chat_bodies(MODEL_NAMES)),
    "/v1/messages": ("anthropic", messages_bodies(MODEL_NAMES)),
    "/v1/responses": ("openai", responses_bodies(MODEL_NAMES)),
    "/v1/compare": ("openai", compare_bodies(MODEL_NAMES)),
}


@pytest.fixture
def api_key(simulator):
    key = fuzz_routes_create(simulator)
    config_watch.invalidate()
    return key


@pytest.fixture
def in_process():
    """An event loop for in-process requests, and a watch on the log; upstream clients opened in the
    loop are closed before it ends."""
    log = ErrorLog()
    logging.getLogger().addHandler(log)
    with asyncio.Runner() as runner:
        try:
            yield runner, log
        finally:
            runner.run(background_drain())
            runner.run(upstream_clients_close())
            logging.getLogger().removeHandler(log)


def _send_in_process(runner, log, path: str, raw: bytes, dialect: str, extra_headers=(), auth: bytes = b"") -> None:
    log.clear()
    header_list = [(b"content-type", b"application/json")]
    if auth:
        header_list.append((b"authorization", auth))
    if dialect == "anthropic":
        header_list.append((b"anthropic-version", b"2023-06-01"))
    answer = runner.run(asgi_request(application, "POST", path, body=raw, headers=[*header_list, *extra_headers]))
    assert_clean_answer(answer, dialect)
    assert b"internal_error" not in answer.body, answer.body[:2000]
    log.check()


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_garbage_bodies_in_process(api_key, in_process, path):
    runner, log = in_process
    dialect, bodies = ENDPOINTS[path]

    @fuzz_settings()
    @given(body=bodies, mutation=raw_mutations)
    def check(body, mutation):
        _send_in_process(runner, log, path, raw_body(body, mutation), dialect, auth=f"Bearer {api_key}".encode())

    check()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/compare"])
def test_garbage_headers_in_process(api_key, in_process, path):
    """Garbled keys, CRLF inside a value, bytes that are not Latin-1 or UTF-8, values of 70 kB."""
    runner, log = in_process
    dialect, _ = ENDPOINTS[path]
    body = orjson.dumps({"model": "fz-oa", "models": ["fz-oa"], "max_tokens": 5,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip

    @fuzz_settings()
    @given(extra=headers, keep_key=st.booleans())
    def check(extra, keep_key):
        auth = f"Bearer {api_key}".encode() if keep_key else b""
        _send_in_process(runner, log, path, body, dialect, extra_headers=extra, auth=auth)

    check()


# Over loopback HTTP, against a gateway process ----------------------------------------------------


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_garbage_bodies_over_http(api_key, gateway, path):
    dialect, bodies = ENDPOINTS[path]
    tail = LogTail(gateway)
    auth = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    if dialect == "anthropic":
        auth["anthropic-version"] = "2023-06-01"

    with httpx.Client(base_url=gateway.url, headers=auth, timeout=30) as client:

        @fuzz_settings()
        @given(body=bodies, mutation=raw_mutations)
        def check(body, mutation):
            response = client.post(path, content=raw_body(body, mutation))
            answer = _answer(response.status_code, response.headers, response.content)
            assert_clean_answer(answer, dialect)
            assert b"internal_error" not in answer.body, answer.body[:2000]
            assert_clean_log(tail.new())

        check()


def _answer(status, response_headers, content) -> Answer:
    return Answer(status, {name.lower(): value for name, value in response_headers.items()}, content)


def _raw_http(url: str, request: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """The answer to raw request bytes, or None when the HTTP server reset the connection (it refuses
    some malformed requests before reading all of them: they never reach the gateway)."""
    host, port = url.removeprefix("http://").split(":")
    data = b""
    try:
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(request)
            while chunk := conn.recv(65536):
                data += chunk
    except (ConnectionResetError, BrokenPipeError):
        if not data:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        parsed[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return status, parsed, body


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_garbage_headers_over_http(api_key, gateway, path):
    """Raw header bytes on the wire. Requests the HTTP server itself refuses never reach the gateway and get
    the server's own 400 (a bare CR) or 431 (headers over GATEWAY_MAX_HEADER_BYTES); everything the gateway
    answers is in the path's dialect."""
    dialect, _ = ENDPOINTS[path]
    tail = LogTail(gateway)
    body = orjson.dumps({"model": "fz-oa", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})

    @fuzz_settings()
    @given(extra=headers, keep_key=st.booleans())
    def check(extra, keep_key):
        lines = [f"POST {path} HTTP/1.1".encode(), b"host: 127.0.0.1", b"connection: close",
                 b"content-type: application/json", f"content-length: {len(body)}".encode()]  # fmt: skip
        if keep_key:
            lines.append(f"authorization: Bearer {api_key}".encode())
        lines += [name + b": " + value for name, value in extra if name != b"content-length"]
        answer = _raw_http(gateway.url, b"\r\n".join(lines) + b"\r\n\r\n" + body)
        if answer is None:
            assert_clean_log(tail.new())
            return
        status, answer_headers, content = answer
        assert status < 500, (status, content[:500])
        if "x-request-id" in answer_headers:  # answered by the gateway, not refused by the HTTP server
            if answer_headers.get("transfer-encoding") == "chunked":
                content = _unchunk(content)
            assert_clean_answer(_answer(status, answer_headers, content), dialect)
        else:
            assert status in (400, 431), (status, content[:500])
        assert_clean_log(tail.new())

    check()


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            break
        out += rest[:length]
        data = rest[length + 2 :]
    return out


# Defects the fuzzing found, each pinned by an example -----------------------------------------------


def _post(gateway, key, path, body: bytes | dict, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    sent = {"authorization": f"Bearer {key}", "content-type": "application/json", **headers}
    if path.startswith("/v1/messages"):
        sent.setdefault("anthropic-version", "2023-06-01")
    return httpx.post(gateway.url + path, content=content, headers=sent, timeout=30)


def _error(response: httpx.Response, status: int, dialect: str) -> dict:
    answer = _answer(response.status_code, response.headers, response.content)
    assert answer.status == status, answer.body[:500]
    assert_clean_answer(answer, dialect)
    return response.json()["error"]


@pytest.mark.parametrize("depth", [254, 255, 600, 1023])
@pytest.mark.parametrize(("path", "model"), [("/v1/chat/completions", "fz-oa"), ("/v1/messages", "fz-an"),
                                             ("/v1/chat/completions", "fz-an"), ("/v1/messages", "fz-oa")])  # fmt: skip
def test_json_nested_past_the_encoder_limit_is_a_400_naming_the_field(api_key, gateway, path, model, depth):
    """orjson reads 1,024 levels but writes only 254: a passed-through field nested deeper used to be a 500."""
    tail = LogTail(gateway)
    body = orjson.dumps({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    raw = body[:-1] + b',"metadata":' + b"[" * depth + b"]" * depth + b"}"
    error = _error(_post(gateway, api_key, path, raw), 400, "anthropic" if path == "/v1/messages" else "openai")
    assert "'metadata' nests JSON more than 200 levels deep" in error["message"]
    assert_clean_log(tail.new())


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": 5}, "stop"),
        ({"tools": 5}, "tools"),
        ({"functions": 5}, "functions"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": 5}]},
            "messages[1].tool_calls",
        ),  # fmt: skip
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 7}}]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),  # fmt: skip
    ],
)
def test_openai_client_to_anthropic_provider_wrong_types_are_400s(api_key, gateway, fields, param):
    body = {"model": "fz-an", "messages": [{"role": "user", "content": "hi"}], **fields}
    error = _error(_post(gateway, api_key, "/v1/chat/completions", body), 400, "openai")
    assert error["param"] == param
    assert param in error["message"] or param.split(".")[-1] in error["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": 5}, "tools"),
        ({"stop_sequences": 5}, "stop_sequences"),
        ({"tool_choice": {"type": ["auto"]}}, "tool_choice"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]},
            "messages[0].content[0].content",
        ),  # fmt: skip
    ],
)
def test_anthropic_client_to_openai_provider_wrong_types_are_400s(api_key, gateway, fields, field):
    body = {"model": "fz-oa", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **fields}
    error = _error(_post(gateway, api_key, "/v1/messages", body), 400, "anthropic")
    assert error["type"] == "invalid_request_error"
    assert f"'{field}" in error["message"]


@pytest.mark.parametrize(("path", "dialect"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")])
def test_a_megabyte_model_name_is_not_echoed_back(api_key, gateway, path, dialect):
    name = "m" * 1_000_000
    body = {"model": name, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    error = _error(_post(gateway, api_key, path, body), 404, dialect)
    assert error["message"] == f"the model '{'m' * 200}…' does not exist"


def test_a_megabyte_model_path_is_not_echoed_back(api_key, gateway):
    response = httpx.get(f"{gateway.url}/v1/models/{'m' * 30_000}", headers={"authorization": f"Bearer {api_key}"})
    error = _error(response, 404, "openai")
    assert len(error["message"]) < 300


@pytest.mark.parametrize(
    ("method", "path", "allow", "dialect"),
    [
        ("DELETE", "/v1/models", "GET", "openai"),
        ("POST", "/v1/models", "GET", "openai"),
        ("PUT", "/v1/chat/completions", "POST", "openai"),
        ("GET", "/v1/messages", "POST", "anthropic"),
        ("DELETE", "/v1/messages/count_tokens", "POST", "anthropic"),
    ],
)
def test_wrong_method_is_405_with_allow_in_the_path_dialect(api_key, gateway, method, path, allow, dialect):
    headers = {"authorization": f"Bearer {api_key}"}
    response = httpx.request(method, gateway.url + path, headers=headers, timeout=10)
    error = _error(response, 405, dialect)
    assert response.headers["allow"] == allow
    assert allow in error["message"]
    if dialect == "anthropic":
        assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path", ["/static/..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/admin%00/x", "/static/"]
)
def test_static_paths_out_of_the_static_folders_are_404(gateway, path):
    tail = LogTail(gateway)
    response = httpx.get(gateway.url + path, timeout=10)
    assert response.status_code == 404, response.text[:300]
    assert "root:" not in response.text
    assert_clean_log(tail.new())


def test_static_files_are_still_served(gateway):
    response = httpx.get(gateway.url + "/static/admin/css/base.css", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize("value", [b"12,34", b"abc", b"\xb2", b"-1"])
def test_a_content_length_that_is_no_number_is_a_400(api_key, in_process, value):
    runner, log = in_process
    body = orjson.dumps({"model": "fz-oa", "messages": [{"role": "user", "content": "hi"}]})
    # Two Content-Length headers reach Django joined by a comma.
    headers = [(b"authorization", f"Bearer {api_key}".encode()), (b"content-length", value)]
    answer = runner.run(asgi_request(application, "POST", "/v1/chat/completions", body=body, headers=headers))
    assert answer.status == 400, answer.body
    assert_clean_answer(answer, "openai")
    assert b"Content-Length" in answer.body
    log.check()


def test_a_compare_of_a_million_models_is_refused_at_once(api_key, gateway):
    """The model cap is checked before duplicates, which took quadratic time."""
    body = {"models": [f"m{index}" for index in range(200_000)], "messages": [{"role": "user", "content": "hi"}]}
    response = _post(gateway, api_key, "/v1/compare", body)
    error = _error(response, 400, "openai")
    assert error["code"] == "too_many_models"
    assert response.elapsed.total_seconds() < 5


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"max_output_tokens": "64"}, "max_output_tokens"),
        ("/v1/messages", {"max_tokens": 5, "max_completion_tokens": [64]}, "max_completion_tokens"),
        ("/v1/responses", {"max_tokens": {"n": 64}}, "max_tokens"),
        ("/v1/compare", {"max_output_tokens": "64"}, "max_output_tokens"),
    ],
)
def test_every_size_admission_reads_is_checked(api_key, gateway, path, fields, param):
    """Admission reads max_completion_tokens, max_tokens and max_output_tokens from any body and caps
    them by the key's tier: a size of the wrong type used to fail there (a 500, or a compare model's
    internal error)."""
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    if path == "/v1/compare":
        body["models"] = ["fz-oa"]
    elif path == "/v1/responses":
        body = {"model": "fz-oa", "input": "hi", **fields}
    else:
        body["model"] = "fz-oa"
    error = _error(_post(gateway, api_key, path, body), 400, "anthropic" if path == "/v1/messages" else "openai")
    assert f"'{param}' must be a positive integer" in error["message"]
