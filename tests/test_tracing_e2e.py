"""OpenTelemetry traces of a real gateway process, exported over OTLP/HTTP to a receiver on loopback that decodes
the protobuf: one server span per API request in the client's trace, a client span per upstream attempt whose
context the provider receives as `traceparent`, the GenAI attributes equal to the usage events, and nothing
sent (no exporter, no header) with tracing off."""

import os
import secrets
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from accounts.keys import key_hash
from accounts.models import ApiKey, Team
from tests.support.compare import CompareStream
from tests.support.data import key_create, model_create, provider_create
from tests.support.gateway import ROOT, gateway_env, gateway_start
from tests.support.otlp import OtlpReceiver
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT_WORD = "marzipan-confidential"
UPSTREAM_SECRET = "sk-upstream-" + "tracing-secret"
MESSAGES = [{"role": "user", "content": f"hello {PROMPT_WORD}"}]


@pytest.fixture(scope="module")
def receiver():
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def traced_gateway(receiver, redis_server, tmp_path_factory, django_db_setup):
    """A gateway exporting its traces to `receiver` (batches every 50 ms instead of every 5 s)."""
    handle = gateway_start(
        redis_server,
        tmp_path_factory.mktemp("traced-gateway"),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    yield handle
    handle.stop()


@pytest.fixture
def routes(fresh_simulator, receiver):
    receiver.clear()
    sim = provider_create("sim", fresh_simulator.openai_base, api_key=UPSTREAM_SECRET)
    broken = provider_create("sim-broken", fresh_simulator.openai_base, api_key=UPSTREAM_SECRET)
    claude = provider_create(
        "sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic", api_key=UPSTREAM_SECRET
    )
    return {
        "plain": model_create("traced", [(sim, "sim-echo?tokens=6", 0)]),
        "slow": model_create("traced-slow", [(sim, "sim-echo?tokens=8&interval_ms=40", 0)]),
        "failover": model_create("traced-failover", [(broken, "sim-echo?fail=500", 0), (sim, "sim-echo?tokens=5", 1)]),
        "claude": model_create("traced-claude", [(claude, "sim-claude?tokens=7", 0)]),
    }


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def _post(url: str, key: str, body: dict, *, traceparent: str | None = None, path="/v1/chat/completions", **headers):
    headers = {"Authorization": f"Bearer {key}", **headers}
    if traceparent:
        headers["traceparent"] = traceparent
    return httpx.post(url + path, json=body, headers=headers, timeout=30)


def _usage_event(request_id: str) -> dict:
    return next(
        e
        for e in wait_usage(lambda es: any(e["request_id"] == request_id for e in es))
        if e["request_id"] == request_id
    )


def _by_kind(spans, kind: str):
    return [span for span in spans if span.kind == kind]


def _upstream_traceparents(simulator) -> list[tuple[str, str, str, bool]]:
    """(version, trace id, parent id, sampled) of the traceparent header of each request the simulator got."""
    found = []
    for record in simulator.requests():
        version, trace_id, parent_id, flags = record["headers"]["traceparent"].split("-")
        found.append((version, trace_id, parent_id, bool(int(flags, 16) & 1)))
    return found


def _no_secret_exported(receiver, *secrets_: str) -> None:
    for body in receiver.bodies:
        for secret in (PROMPT_WORD, UPSTREAM_SECRET, *secrets_):
            assert secret.encode() not in body


def _server_span(spans):
    (server,) = _by_kind(spans, "SERVER")
    return server


def test_streamed_chat_is_one_server_span_in_the_clients_trace_ended_with_the_stream(
    traced_gateway, routes, receiver, fresh_simulator
):
    team = Team.objects.create(name="tracers")
    key = key_create("traced")
    api_key = ApiKey.objects.get(key_hash=key_hash(key))
    api_key.team = team
    api_key.save()
    traceparent, trace_id, parent_id = _traceparent()
    body = {"model": "traced-slow", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 50, "temperature": 0.5}  # fmt: skip
    response = _post(traced_gateway.url, key, body, traceparent=traceparent)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    usage = _usage_event(request_id)

    spans = receiver.wait_trace(trace_id, 2)
    server = _server_span(spans)
    (attempt,) = _by_kind(spans, "CLIENT")
    assert server.parent_span_id == parent_id  # a child of the client's span
    assert attempt.parent_span_id == server.span_id
    assert server.name == "chat traced-slow"
    assert server.resource["service.name"] == "ai-gateway"
    attributes = server.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "traced-slow"
    assert attributes["gen_ai.response.model"] == "traced-slow"
    assert attributes["gen_ai.provider.name"] == "sim"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 8
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gateway.key_id"] == usage["api_key_id"] == api_key.id
    assert attributes["gateway.team_id"] == team.id
    assert attributes["gateway.request_id"] == request_id
    assert attributes["gateway.route"] == "default"
    assert attributes["gateway.attempts"] == 1
    assert attributes["gateway.stream"] is True
    assert attributes["gateway.ttfb_ms"] == usage["ttfb_ms"] > 0
    assert attributes["gateway.cost"] == usage["cost"]
    assert attributes["http.response.status_code"] == 200
    assert server.status == "UNSET" and "error.type" not in attributes
    # Ended when the stream ended (8 tokens 40 ms apart), not when the view returned its first event.
    assert server.seconds >= 0.25, server.seconds
    assert server.end_ns >= attempt.end_ns

    assert attempt.name == "chat sim-echo?tokens=8&interval_ms=40"
    assert attempt.attributes["gen_ai.request.model"] == "sim-echo?tokens=8&interval_ms=40"
    assert attempt.attributes["gen_ai.provider.name"] == "sim"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["server.port"] == httpx.URL(fresh_simulator.url).port
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.status == "UNSET"
    # The provider got the attempt's context: same trace, the attempt span as its parent, sampled.
    assert _upstream_traceparents(fresh_simulator) == [("00", trace_id, attempt.span_id, True)]
    _no_secret_exported(receiver, key)


def test_non_streamed_chat_tokens_equal_the_usage_record(traced_gateway, routes, receiver, fresh_simulator):
    key = key_create("traced")
    traceparent, trace_id, parent_id = _traceparent()
    response = _post(traced_gateway.url, key, {"model": "traced", "messages": MESSAGES}, traceparent=traceparent)
    assert response.status_code == 200, response.text
    usage = _usage_event(response.headers["x-request-id"])
    assert response.json()["usage"]["completion_tokens"] == usage["completion_tokens"] == 6

    spans = receiver.wait_trace(trace_id, 2)
    server = _server_span(spans)
    (attempt,) = _by_kind(spans, "CLIENT")
    assert server.parent_span_id == parent_id and attempt.parent_span_id == server.span_id
    assert server.name == "chat traced"
    assert server.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert server.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert server.attributes["gateway.stream"] is False
    assert "gateway.team_id" not in server.attributes
    assert _upstream_traceparents(fresh_simulator) == [("00", trace_id, attempt.span_id, True)]
    _no_secret_exported(receiver, key)


def test_failover_is_two_attempt_spans_the_first_failed(traced_gateway, routes, receiver, fresh_simulator):
    key = key_create("traced")
    traceparent, trace_id, _ = _traceparent()
    body = {"model": "traced-failover", "messages": MESSAGES, "stream": True}
    response = _post(traced_gateway.url, key, body, traceparent=traceparent)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-route"] == "default; attempts=2"

    spans = receiver.wait_trace(trace_id, 3)
    server = _server_span(spans)
    first, second = sorted(_by_kind(spans, "CLIENT"), key=lambda span: span.start_ns)
    assert first.parent_span_id == second.parent_span_id == server.span_id
    assert first.attributes["gateway.provider"] == "sim-broken" and first.attributes["gateway.attempt"] == 1
    assert first.attributes["http.response.status_code"] == 500
    assert first.attributes["error.type"] == "500" and first.status == "ERROR"
    assert first.status_message == "upstream returned HTTP 500"
    assert second.attributes["gateway.provider"] == "sim" and second.attributes["gateway.attempt"] == 2
    assert second.status == "UNSET" and "error.type" not in second.attributes
    assert first.end_ns <= second.start_ns
    assert server.attributes["gateway.attempts"] == 2
    assert server.attributes["gen_ai.provider.name"] == "sim"
    assert server.status == "UNSET"
    # Each attempt's request carried its own span as the parent.
    assert _upstream_traceparents(fresh_simulator) == [
        ("00", trace_id, first.span_id, True),
        ("00", trace_id, second.span_id, True),
    ]


def test_anthropic_messages_and_a_new_trace_without_traceparent(traced_gateway, routes, receiver, fresh_simulator):
    key = key_create("traced")
    body = {"model": "traced-claude", "max_tokens": 100, "messages": MESSAGES, "stream": True}
    response = _post(traced_gateway.url, key, body, path="/v1/messages", **{"anthropic-version": "2023-06-01"})
    assert response.status_code == 200, response.text
    request_id = response.headers["request-id"]
    usage = _usage_event(request_id)

    spans = receiver.wait_spans(lambda spans: any(s.attributes.get("gateway.request_id") == request_id for s in spans))
    server = next(span for span in spans if span.attributes.get("gateway.request_id") == request_id)
    assert server.parent_span_id == ""  # no traceparent came: the trace starts here
    spans = receiver.wait_trace(server.trace_id, 2)
    (attempt,) = _by_kind(spans, "CLIENT")
    assert server.name == "chat traced-claude"
    assert server.attributes["url.path"] == "/v1/messages" and "http.route" not in server.attributes
    assert server.attributes["gen_ai.provider.name"] == "sim-anthropic"
    assert server.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert server.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 7
    assert server.attributes["gen_ai.response.finish_reasons"]
    assert attempt.name == "chat sim-claude?tokens=7"
    assert _upstream_traceparents(fresh_simulator) == [("00", server.trace_id, attempt.span_id, True)]


def test_refusals_and_failures_are_error_spans(traced_gateway, routes, receiver, fresh_simulator):
    key = key_create("traced")
    traceparent, trace_id, parent_id = _traceparent()
    response = _post(traced_gateway.url, key, {"model": "no-such-model", "messages": MESSAGES}, traceparent=traceparent)
    assert response.status_code == 404
    (server,) = receiver.wait_trace(trace_id, 1)
    assert server.name == "chat no-such-model" and server.parent_span_id == parent_id
    assert server.status == "ERROR" and server.attributes["error.type"] == "model_not_found"
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["gateway.key_id"] == ApiKey.objects.get(key_hash=key_hash(key)).id

    broken = provider_create("sim-down", fresh_simulator.openai_base)
    model_create("traced-down", [(broken, "sim-echo?fail=503", 0)])
    traceparent, trace_id, _ = _traceparent()
    response = _post(traced_gateway.url, key, {"model": "traced-down", "messages": MESSAGES}, traceparent=traceparent)
    assert response.status_code == 502, response.text
    spans = receiver.wait_trace(trace_id, 2)
    server = _server_span(spans)
    (attempt,) = _by_kind(spans, "CLIENT")
    assert server.status == "ERROR" and server.attributes["error.type"] == "upstream_unavailable"
    assert server.attributes["gateway.status_code"] == 502
    assert attempt.status == "ERROR" and attempt.attributes["error.type"] == "503"


def test_compare_has_a_child_span_per_model(traced_gateway, routes, receiver, fresh_simulator):
    key = key_create("traced", max_compare_models=4)
    traceparent, trace_id, parent_id = _traceparent()
    got = compare_stream_traced(traced_gateway.url, key, traceparent, ["traced", "traced-claude"])
    assert got.status == 200 and got.events[-1]["type"] == "complete"

    spans = receiver.wait_trace(trace_id, 5)
    server = _server_span(spans)
    assert server.name == "POST /v1/compare" and server.parent_span_id == parent_id
    calls = {span.attributes["gen_ai.request.model"]: span for span in _by_kind(spans, "INTERNAL")}
    assert set(calls) == {"traced", "traced-claude"}
    for name, call in calls.items():
        assert call.name == f"chat {name}" and call.parent_span_id == server.span_id
        assert call.attributes["gateway.run_id"] == got.headers["x-gateway-run-id"]
        usage = _usage_event(call.attributes["gateway.request_id"])
        assert call.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
        (attempt,) = [span for span in _by_kind(spans, "CLIENT") if span.parent_span_id == call.span_id]
        assert attempt.attributes["http.response.status_code"] == 200
        assert call.end_ns <= server.end_ns
    assert {tuple(tp[:2]) for tp in _upstream_traceparents(fresh_simulator)} == {("00", trace_id)}


def test_a_cache_hit_has_no_attempt_and_says_so(traced_gateway, routes, receiver, fresh_simulator):
    key = key_create("traced-cached", cache_ttl_seconds=60)
    body = {"model": "traced", "messages": [{"role": "user", "content": f"cache me {secrets.token_hex(8)}"}]}
    assert _post(traced_gateway.url, key, body).headers["x-gateway-cache"] == "miss"
    traceparent, trace_id, _ = _traceparent()
    deadline = time.monotonic() + 5
    while (response := _post(traced_gateway.url, key, body, traceparent=traceparent)).headers[
        "x-gateway-cache"
    ] != "hit":
        assert time.monotonic() < deadline, "the answer was never stored"
        time.sleep(0.05)
    (server,) = receiver.wait_trace(trace_id, 1)
    usage = _usage_event(response.headers["x-request-id"])
    assert server.name == "chat traced"
    assert server.attributes["gateway.cache"] == "hit"
    assert server.attributes["gateway.attempts"] == 0
    assert server.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 6
    assert "gen_ai.provider.name" not in server.attributes
    assert all(record["headers"]["traceparent"].split("-")[1] != trace_id for record in fresh_simulator.requests())


def test_a_client_leaving_mid_stream_ends_the_span_as_499(traced_gateway, routes, receiver, fresh_simulator):
    model_create(
        "traced-long", [(routes["plain"].deployments.first().provider, "sim-echo?tokens=200&interval_ms=20", 0)]
    )
    key = key_create("traced")
    traceparent, trace_id, _ = _traceparent()
    body = {"model": "traced-long", "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {key}", "traceparent": traceparent}
    with httpx.stream("POST", traced_gateway.openai_base + "/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        for _ in zip(range(3), response.iter_raw(), strict=False):
            pass
    spans = receiver.wait_trace(trace_id, 2)
    server = _server_span(spans)
    (attempt,) = _by_kind(spans, "CLIENT")
    assert server.status == "ERROR" and server.attributes["error.type"] == "client_disconnected"
    assert server.attributes["gateway.status_code"] == 499
    assert 0 < server.attributes["gen_ai.usage.output_tokens"] < 200
    # The attempt ended with the call (its upstream closed), the provider not at fault.
    assert attempt.status == "UNSET" and attempt.end_ns <= server.end_ns
    assert server.seconds < 3


def compare_stream_traced(url: str, key: str, traceparent: str, models: list[str]):
    """compare_stream with a traceparent header (the helper sends only the key)."""
    with httpx.stream(
        "POST",
        url + "/v1/compare",
        json={"models": models, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {key}", "traceparent": traceparent},
        timeout=30,
    ) as response:
        response.read()
    stream = CompareStream(status=response.status_code, headers=dict(response.headers))
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            stream.events.append(orjson.loads(line[6:]))
    return stream


def test_tracing_off_by_default_sends_no_traceparent_upstream(gateway, fresh_simulator):
    assert not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("untraced", [(sim, "sim-echo?tokens=3", 0)])
    key = key_create("untraced")
    traceparent, _, _ = _traceparent()
    for stream in (False, True):
        response = _post(gateway.url, key, {"model": "untraced", "messages": MESSAGES, "stream": stream},
                         traceparent=traceparent)  # fmt: skip
        assert response.status_code == 200
    assert [r for r in fresh_simulator.requests() if "traceparent" in r["headers"]] == []
    assert len(fresh_simulator.requests()) == 2


def test_sdk_disabled_exports_nothing(receiver, redis_server, tmp_path, django_db_setup, fresh_simulator):
    receiver.clear()
    handle = gateway_start(
        redis_server,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_SDK_DISABLED="true",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    try:
        sim = provider_create("sim", fresh_simulator.openai_base)
        model_create("untraced", [(sim, "sim-echo?tokens=3", 0)])
        key = key_create("untraced")
        traceparent, _, _ = _traceparent()
        response = _post(handle.url, key, {"model": "untraced", "messages": MESSAGES}, traceparent=traceparent)
        assert response.status_code == 200
    finally:
        handle.stop()  # a stopping gateway exports what it still holds: nothing here
    assert receiver.exports == []
    assert "traceparent" not in fresh_simulator.requests()[-1]["headers"]


PROBE = """
import sys, threading
import aigateway.asgi
from aigateway import tracing
print(tracing.tracer is not None, "opentelemetry.sdk.trace" in sys.modules,
      any(t.name.startswith("OtelBatch") for t in threading.enumerate()))
"""


@pytest.mark.parametrize(
    ("otel", "expected"),
    [
        ({}, "False False False"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "True True True"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}, "True True True"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}, "False False False"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"}, "False False False"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "False False False",
        ),
    ],
)
def test_the_sdk_and_its_exporter_thread_exist_only_when_asked_for(redis_server, otel, expected):
    """A gateway process (the ASGI application imported as the servers import it): without the OTEL variables
    that ask for traces, no tracer, no SDK imported, no exporter thread."""
    env = gateway_env(redis_server, **otel)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
                 "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL"):  # fmt: skip
        if name not in otel:
            env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
