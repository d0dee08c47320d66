"""Nothing an upstream sends can hurt the gateway: values of the wrong type or out of range, error
messages quoting the gateway's credentials, bytes dripped so slowly that no event ever completes,
extra headers that would split a request. A real gateway process (uvicorn) relays to a scripted hostile
provider on loopback (tests.support.hostile), with real Redis; each test checks what the client got,
the usage event the call left (or the record a Celery worker wrote), and that no concurrency lease is
left behind.
"""

import time

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import UsageRecord
from aigateway.redis import redis_sync
from providers.models import Deployment, Model
from providers.routing import BREAKER_FAILURES_KEY, BREAKER_OPEN_KEY
from tests.support.data import key_create, provider_create
from tests.support.gateway import gateway_start
from tests.support.hostile import Drip, Events, HostileUpstream, Reply
from tests.support.usage import leases_held, wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me about the weather in Paris today"}]
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
BREAKER_FAILURES = 2
# The documented maximum of one token count (providers.dialects.values.TOKEN_COUNT_MAX).
TOKEN_COUNT_MAX = 100_000_000
SK_KEY = "sk-prov-7f3a9c2e41d84b6f9a0e5d21"
PLAIN_KEY = "prov_4q9Zx7Lm2Rt8Wv5Kc3HnBb6"


@pytest.fixture(scope="module")
def hostile():
    upstream = HostileUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory, django_db_setup):
    handle = gateway_start(
        redis_server, tmp_path_factory.mktemp("hostile"), GATEWAY_BREAKER_FAILURES=str(BREAKER_FAILURES)
    )
    yield handle
    handle.stop()


def deploy(
    hostile: HostileUpstream,
    name: str,
    answer,
    *,
    dialect: str = "openai",
    api_key: str = SK_KEY,
    timeout_total: float | None = None,
    **provider_fields,
) -> Model:
    """A model served by one deployment on its own provider at the hostile upstream, scripted to `answer`."""
    base = hostile.url + ("/v1" if dialect == "openai" else "")
    provider = provider_create(f"p-{name}", base, dialect=dialect, api_key=api_key, **provider_fields)
    model = Model.objects.create(name=name)
    Deployment.objects.create(model=model, provider=provider, upstream_model=f"up-{name}", timeout_total=timeout_total)
    hostile.script[f"up-{name}"] = answer
    return model


def ask(gateway, dialect: str, model: str, *, stream: bool, key: str, query: str = "", timeout: float = 15.0):
    body = {"model": model, "messages": MESSAGES, "stream": stream, "max_tokens": 50}
    if dialect == "anthropic":
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    else:
        headers = {"Authorization": f"Bearer {key}"}
    url = gateway.url + PATHS[dialect] + (f"?{query}" if query else "")
    started = time.monotonic()
    with httpx.stream("POST", url, json=body, headers=headers, timeout=timeout) as response:
        raw = response.read()
    return response, raw, time.monotonic() - started


def usage_of(request_id: str, timeout: float = 5.0) -> dict:
    events = wait_usage(lambda events: any(e["request_id"] == request_id for e in events), timeout=timeout)
    return next(e for e in events if e["request_id"] == request_id)


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((name, "\n".join(data)))
    return out


def error_events(raw: bytes) -> list[dict]:
    found = []
    for name, data in sse_events(raw):
        if data == "[DONE]":
            continue
        payload = orjson.loads(data)
        if name == "error" or "error" in payload:
            found.append(payload["error"])
    return found


def no_leases() -> None:
    eventually(lambda: leases_held() == 0, timeout=5, what="every concurrency lease freed")


def chunk(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_chunk(**fields) -> bytes:
    return chunk({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up", **fields})


def openai_stream(usage) -> Events:
    return Events(
        [
            openai_chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Sunny and mild"}}]),
            openai_chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            openai_chunk(choices=[], usage=usage),
            b"data: [DONE]\n\n",
        ]
    )


def anthropic_stream(input_usage, output_usage) -> Events:
    def event(payload: dict) -> bytes:
        return f"event: {payload['type']}\n".encode() + chunk(payload)

    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "up", "content": []}
    return Events(
        [
            event({"type": "message_start", "message": {**message, "usage": input_usage}}),
            event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Sunny"}}),
            event({"type": "content_block_stop", "index": 0}),
            event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": output_usage}),
            event({"type": "message_stop"}),
        ]
    )


def openai_reply(**fields) -> dict:
    message = {"role": "assistant", "content": "Sunny and mild"}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        **fields,
    }


# 1. Values of the wrong type or out of range --------------------------------------------------------


@pytest.mark.parametrize("message", [12345, ["not", "text"], {"nested": True}, None], ids=repr)
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_an_error_message_that_is_not_text_is_a_clean_error_and_the_call_is_recorded(
    gateway, hostile, dialect, message
):
    """A 400 whose error message is a number, a list, an object or null: the client gets the upstream's
    status in its own dialect's error shape with a message of ours, the call is recorded, the lease freed."""
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    model = deploy(hostile, f"msg-{dialect}-{type(message).__name__}", Reply(400, error), dialect=dialect)
    key = key_create("values", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(gateway, dialect, model.name, stream=False, key=key)

    assert response.status_code == 400, raw
    body = orjson.loads(raw)
    assert body["error"]["message"] == "upstream returned HTTP 400"
    event = usage_of(response.headers["x-request-id"])
    assert (event["status_code"], event["error_type"]) == (400, "upstream_error")
    no_leases()


BAD_REPLIES = {
    "choices-a-string-usage-a-string": openai_reply(choices="nope", usage="lots"),
    "usage-count-a-string": openai_reply(usage={"prompt_tokens": "many", "completion_tokens": 4}),
    "usage-count-negative": openai_reply(usage={"prompt_tokens": 12, "completion_tokens": -5}),
    "usage-count-a-float": openai_reply(usage={"prompt_tokens": 12.5, "completion_tokens": 4}),
    "message-a-list": openai_reply(choices=[{"index": 0, "message": ["x"], "finish_reason": "stop"}]),
}


@pytest.mark.parametrize("case", list(BAD_REPLIES))
@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_reply_with_values_of_the_wrong_type_is_a_502_recorded_with_estimated_tokens(gateway, hostile, client, case):
    """A 200 whose choices, message or usage counts have the wrong type (or a negative count), relayed as it
    is (same dialect) or translated: a clean 502 in the client's dialect naming the field, one usage event
    with the gateway's estimate (tokens_estimated), no lease left."""
    model = deploy(hostile, f"reply-{client}-{case}", Reply(200, BAD_REPLIES[case]))
    key = key_create("values", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(gateway, client, model.name, stream=False, key=key)

    assert response.status_code == 502, raw
    body = orjson.loads(raw)
    if client == "anthropic":
        assert body["type"] == "error"
    assert "malformed" in body["error"]["message"], body
    event = usage_of(response.headers["x-request-id"])
    assert (event["status_code"], event["error_type"]) == (502, "upstream_bad_response")
    assert event["tokens_estimated"] is True
    assert event["prompt_tokens"] > 0
    assert event["provider"] == f"p-{model.name}"
    no_leases()


# (upstream dialect, events, whether the answer's text comes before the bad value)
STREAM_CASES = {
    "openai-prompt-a-string": ("openai", openai_stream({"prompt_tokens": "many", "completion_tokens": 3}), True),
    "openai-completion-negative": ("openai", openai_stream({"prompt_tokens": 12, "completion_tokens": -7}), True),
    "openai-usage-a-list": ("openai", openai_stream([1, 2]), True),
    "anthropic-input-a-string": (
        "anthropic",
        anthropic_stream({"input_tokens": "many"}, {"output_tokens": 3}),
        False,
    ),
    "anthropic-output-negative": (
        "anthropic",
        anthropic_stream({"input_tokens": 12}, {"output_tokens": -3}),
        True,
    ),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_stream_with_a_bad_usage_value_ends_with_an_error_event_and_is_recorded(gateway, hostile, client, case):
    """A stream whose usage report holds a string, a list or a negative count: the client gets the text
    sent before it, then an error event naming the member and a clean end; the call is one usage event with
    the gateway's estimate (tokens_estimated), and the lease is freed."""
    upstream_dialect, events, text_first = STREAM_CASES[case]
    model = deploy(hostile, f"stream-{client}-{case}", events, dialect=upstream_dialect)
    key = key_create("values", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(gateway, client, model.name, stream=True, key=key)

    assert response.status_code == 200
    assert (b"Sunny" in raw) is text_first
    errors = error_events(raw)
    assert len(errors) == 1, raw
    assert "malformed" in errors[0]["message"] and "usage" in errors[0]["message"]
    if client == "openai":
        assert raw.rstrip().endswith(b"data: [DONE]")
    event = usage_of(response.headers["x-request-id"])
    assert (event["status_code"], event["error_type"]) == (502, "upstream_stream_error")
    assert event["tokens_estimated"] is True
    assert event["prompt_tokens"] > 0
    assert (event["completion_tokens"] > 0) is text_first
    no_leases()


def test_a_negative_count_does_not_break_the_metrics(redis_server, hostile, tmp_path):
    """A negative token count used to reach the Prometheus counters and fail the metrics write of every
    tally flushed with it: the calls' answers and durations went missing from /metrics."""
    token = "metrics-token-for-hostile-tests"
    handle = gateway_start(redis_server, tmp_path, GATEWAY_METRICS_TOKEN=token)
    try:
        model = deploy(hostile, "negative-metrics", openai_stream({"prompt_tokens": 12, "completion_tokens": -7}))
        key = key_create("values", max_concurrent=4, rpm=10_000)
        response, _raw, _ = ask(handle, "openai", model.name, stream=True, key=key)
        usage_of(response.headers["x-request-id"])

        def counted() -> bool:
            answer = httpx.get(handle.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert answer.status_code == 200
            durations = [
                sample
                for family in text_string_to_metric_families(answer.text)
                for sample in family.samples
                if sample.name == "gateway_request_duration_seconds_count" and sample.labels["model"] == model.name
            ]
            return bool(durations) and durations[0].value == 1

        eventually(counted, timeout=5, what="the call's duration in /metrics")
        assert "writing metrics failed" not in handle.log()
    finally:
        handle.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_absurd_token_count_is_clamped_to_the_documented_maximum_and_flagged(
    gateway, hostile, celery_worker, stream
):
    """completion_tokens of 10**12 used to be stored as 2,147,483,647 (the column's limit) and priced in full:
    it is counted as the documented maximum and the record says its tokens are not the provider's report."""
    usage = {"prompt_tokens": 12, "completion_tokens": 10**12, "total_tokens": 10**12 + 12}
    answer = openai_stream(usage) if stream else Reply(200, openai_reply(usage=usage))
    model = deploy(hostile, f"absurd-{stream}", answer)
    key = key_create("values", max_concurrent=4, rpm=10_000)
    celery_worker(beat=True, flush_seconds=0.3)

    response, raw, _ = ask(gateway, "openai", model.name, stream=stream, key=key)

    assert response.status_code == 200, raw
    if stream:
        assert not error_events(raw)
    request_id = response.headers["x-request-id"]
    eventually(lambda: UsageRecord.objects.filter(request_id=request_id).exists(), timeout=15, what="the record")
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (12, TOKEN_COUNT_MAX)
    assert record.tokens_estimated is True
    assert record.status_code == 200
    assert "above the maximum" in gateway.log()
    no_leases()


# 2. Secrets in upstream messages ----------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [SK_KEY, PLAIN_KEY], ids=["sk-like", "plain"])
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_an_upstream_error_quoting_our_credentials_is_redacted(gateway, hostile, dialect, api_key):
    """A provider answering 400 with a message that quotes every header it got (Authorization: Bearer
    <key>, x-api-key: <key>): the client's error and the gateway's log hold no trace of the provider key."""
    model = deploy(
        hostile, f"echo-{dialect}-{api_key[:4]}", Reply(400, echo_headers=True), dialect=dialect, api_key=api_key
    )
    key = key_create("secrets", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(gateway, dialect, model.name, stream=False, key=key)

    assert response.status_code == 400, raw
    message = orjson.loads(raw)["error"]["message"]
    assert "headers were" in message  # the provider's own words are still relayed
    assert "[redacted]" in message
    assert api_key not in raw.decode()
    assert api_key[:12] not in raw.decode() and api_key[-12:] not in raw.decode()
    assert api_key not in gateway.log()
    no_leases()


def test_a_count_tokens_error_quoting_our_credentials_is_redacted(gateway, hostile):
    """/v1/messages/count_tokens relays a provider's 4xx the same way: without the provider key."""
    model = deploy(hostile, "echo-count", Reply(400, echo_headers=True), dialect="anthropic", api_key=PLAIN_KEY)
    key = key_create("secrets", max_concurrent=4, rpm=10_000)

    response = httpx.post(
        gateway.url + "/v1/messages/count_tokens",
        json={"model": model.name, "messages": MESSAGES},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=15,
    )

    assert response.status_code == 400, response.text
    assert "[redacted]" in response.json()["error"]["message"]
    assert PLAIN_KEY not in response.text
    assert hostile.seen(f"up-{model.name}")[0].target == "/v1/messages/count_tokens"


def test_a_long_upstream_error_cut_in_the_middle_of_the_key_leaves_no_part_of_it(gateway, hostile):
    """A message long enough to be shortened for the client, with the provider key where it is cut."""
    message = "x" * 480 + " token " + PLAIN_KEY + " " + "y" * 600
    model = deploy(hostile, "echo-long", Reply(400, {"error": {"message": message}}), api_key=PLAIN_KEY)
    key = key_create("secrets", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(gateway, "openai", model.name, stream=False, key=key)

    assert response.status_code == 400, raw
    text = orjson.loads(raw)["error"]["message"]
    for size in (6, 8):
        pieces = {PLAIN_KEY[i : i + size] for i in range(len(PLAIN_KEY) - size + 1)}
        assert not [piece for piece in pieces if piece in text], text


STREAM_ECHO = {
    "openai": (
        "openai",
        'data: {"error": {"message": "upstream overloaded; request headers: {headers}", "type": "server_error"}}\n\n',
    ),
    "anthropic": (
        "anthropic",
        'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        '"message": "overloaded; request headers: {headers}"}}\n\n',
    ),
}


@pytest.mark.parametrize("upstream", list(STREAM_ECHO))
@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_stream_error_event_quoting_our_credentials_is_redacted(gateway, hostile, client, upstream):
    """A stream error event quoting the request's headers, passed through (same dialect) or translated:
    the client's stream and the gateway's log hold no trace of the provider key."""
    dialect, template = STREAM_ECHO[upstream]
    first = (
        openai_chunk(choices=[{"index": 0, "delta": {"content": "Sun"}}])
        if dialect == "openai"
        else b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1", "usage": '
        b'{"input_tokens": 12}}}\n\n'
    )
    model = deploy(
        hostile,
        f"stream-echo-{client}-{upstream}",
        Events([first], echo_headers_event=template),
        dialect=dialect,
        api_key=PLAIN_KEY,
    )
    key = key_create("secrets", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(gateway, client, model.name, stream=True, key=key)

    assert response.status_code == 200
    errors = error_events(raw)
    assert len(errors) == 1, raw
    assert "[redacted]" in errors[0]["message"]
    assert PLAIN_KEY not in raw.decode()
    assert PLAIN_KEY not in gateway.log()
    event = usage_of(response.headers["x-request-id"])
    assert event["status_code"] == 502
    no_leases()


# 3. Drips: bytes that never complete an event, events that never end ----------------------------------


DRIP_FIRST = openai_chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Sun"}}])


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_a_stream_dripping_bytes_that_never_complete_an_event_is_cut(gateway, hostile, client):
    """After a first event, one byte every 0.3 s of an event that never completes: the provider's read
    timeout (1.5 s) never fires, but no complete event for 1.5 s (the event idle timeout, by default the
    read timeout) ends it: an error event, the call recorded, the lease freed, the upstream closed."""
    model = deploy(
        hostile,
        f"drip-event-{client}",
        Drip(head=DRIP_FIRST + b'data: {"id": "chatcmpl-1", ', interval=0.3, limit=30),
        timeout_read=1.5,
    )
    key = key_create("drips", max_concurrent=4, rpm=10_000)

    response, raw, seconds = ask(gateway, client, model.name, stream=True, key=key)

    assert response.status_code == 200
    assert b"Sun" in raw
    errors = error_events(raw)
    assert len(errors) == 1 and "1.5s" in errors[0]["message"], raw
    assert seconds < 1.5 * 4, seconds
    print(f"HOSTILE drip-event {client}: cut after {seconds:.2f}s (idle timeout 1.5s)")
    event = usage_of(response.headers["x-request-id"])
    assert (event["status_code"], event["error_type"]) == (504, "upstream_timeout")
    assert event["tokens_estimated"] is True
    no_leases()
    [seen] = hostile.seen(f"up-{model.name}")
    eventually(lambda: seen.left is not None, timeout=5, what="the upstream connection closed")


def test_a_json_body_dripped_a_byte_at_a_time_is_a_504(gateway, hostile):
    """A non-streamed answer whose body comes one byte every 0.3 s: it must be complete within the event
    idle timeout (1.5 s here) of its headers; a 504, the call recorded, the lease freed, the upstream closed."""
    model = deploy(
        hostile, "drip-json", Drip(stream=False, head=b'{"id": "x", ', interval=0.3, limit=30), timeout_read=1.5
    )
    key = key_create("drips", max_concurrent=4, rpm=10_000)

    response, raw, seconds = ask(gateway, "openai", model.name, stream=False, key=key)

    assert response.status_code == 504, raw
    assert "1.5s" in orjson.loads(raw)["error"]["message"]
    assert seconds < 1.5 * 4, seconds
    print(f"HOSTILE drip-json: cut after {seconds:.2f}s (idle timeout 1.5s)")
    event = usage_of(response.headers["x-request-id"])
    assert event["status_code"] == 504
    no_leases()
    [seen] = hostile.seen(f"up-{model.name}")
    eventually(lambda: seen.left is not None, timeout=5, what="the upstream connection closed")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_deployments_total_timeout_caps_a_call_that_never_ends(gateway, hostile, stream):
    """Complete events every 0.2 s, forever (or a JSON body, a byte at a time, within every other timeout):
    the deployment's timeout_total of 2 s ends the call - a 504 before the first byte, an error event after
    it - recorded, its lease freed, the upstream closed."""
    event_chunk = openai_chunk(choices=[{"index": 0, "delta": {"content": " more"}}])
    answer = (
        Drip(head=DRIP_FIRST, byte=event_chunk, interval=0.2, limit=30)
        if stream
        else Drip(stream=False, head=b"{", byte=b" ", interval=0.2, limit=30)
    )
    model = deploy(hostile, f"endless-{stream}", answer, timeout_total=2.0, timeout_read=30)
    key = key_create("drips", max_concurrent=4, rpm=10_000)

    response, raw, seconds = ask(gateway, "openai", model.name, stream=stream, key=key)

    assert 1.9 < seconds < 2 * 3, seconds
    print(f"HOSTILE endless {'stream' if stream else 'json'}: cut after {seconds:.2f}s (timeout_total 2s)")
    if stream:
        assert response.status_code == 200
        assert raw.count(b" more") >= 3
        errors = error_events(raw)
        assert len(errors) == 1 and "2s" in errors[0]["message"], raw
    else:
        assert response.status_code == 504, raw
        assert "2s" in orjson.loads(raw)["error"]["message"]
    event = usage_of(response.headers["x-request-id"])
    assert event["status_code"] == 504
    no_leases()
    [seen] = hostile.seen(f"up-{model.name}")
    eventually(lambda: seen.left is not None, timeout=5, what="the upstream connection closed")


# 4. Extra headers that would split a request --------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"X-Team": "ops\r\nX-Injected: 1"}, {"X-Team: ops\r\nX-Injected": "1"}, {"X-Team Name": "ops"}],
    ids=["crlf-in-value", "colon-and-crlf-in-name", "space-in-name"],
)
def test_an_invalid_extra_header_of_an_old_row_is_a_configuration_error_not_a_provider_failure(
    gateway, hostile, headers
):
    """A provider row saved before extra headers were checked, with a header that would inject another:
    nothing reaches the provider, the next deployment serves the model, and the provider's breaker never
    opens however often it is tried; with no other deployment the client gets a 502 naming the header."""
    bad = provider_create("p-bad-headers", hostile.url + "/v1", extra_headers=headers)
    good = provider_create("p-good-headers", hostile.url + "/v1")
    upstream = f"up-bad-{len(hostile.requests)}"
    both = Model.objects.create(name="headers-both")
    bad_deployment = Deployment.objects.create(model=both, provider=bad, upstream_model=upstream, priority=0)
    Deployment.objects.create(model=both, provider=good, upstream_model="up-good", priority=1)
    alone = Model.objects.create(name="headers-alone")
    alone_deployment = Deployment.objects.create(model=alone, provider=bad, upstream_model=upstream)
    hostile.script[upstream] = hostile.script["up-good"] = Reply(200, openai_reply())
    key = key_create("headers", max_concurrent=4, rpm=10_000)

    for _ in range(BREAKER_FAILURES + 2):
        response, raw, _ = ask(gateway, "openai", "headers-both", stream=False, key=key)
        assert response.status_code == 200, raw
        assert response.headers["x-gateway-provider"] == "p-good-headers"
    response, raw, _ = ask(gateway, "openai", "headers-alone", stream=False, key=key)

    assert response.status_code == 502, raw
    name = next(iter(headers))
    assert repr(name) in orjson.loads(raw)["error"]["message"]
    assert not hostile.seen(upstream)
    assert not any("x-injected" in seen.headers for seen in hostile.requests)
    for deployment in (bad_deployment, alone_deployment):
        assert redis_sync().get(BREAKER_OPEN_KEY.format(deployment_id=deployment.id)) is None
        assert redis_sync().get(BREAKER_FAILURES_KEY.format(deployment_id=deployment.id)) is None
    no_leases()


# 5. The client's query string ------------------------------------------------------------------------------


def test_only_the_dialects_documented_query_parameters_reach_the_provider(gateway, hostile):
    """`?beta=true&foo=bar&key=INJECTED` on /v1/messages: only beta=true reaches an Anthropic provider;
    nothing of a query reaches an OpenAI one."""
    events = anthropic_stream({"input_tokens": 12}, {"output_tokens": 3})
    claude = deploy(hostile, "query-claude", events, dialect="anthropic")
    gpt = deploy(hostile, "query-gpt", Reply(200, openai_reply()))
    key = key_create("query", max_concurrent=4, rpm=10_000)

    response, raw, _ = ask(
        gateway, "anthropic", claude.name, stream=True, key=key, query="beta=true&foo=bar&key=INJECTED"
    )
    assert response.status_code == 200, raw
    response, raw, _ = ask(gateway, "openai", gpt.name, stream=False, key=key, query="api-version=1&key=INJECTED")
    assert response.status_code == 200, raw

    assert [seen.query for seen in hostile.seen(f"up-{claude.name}")] == ["beta=true"]
    assert [seen.query for seen in hostile.seen(f"up-{gpt.name}")] == [""]
