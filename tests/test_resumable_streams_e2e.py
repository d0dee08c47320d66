"""Resumable streams end to end: two real gateway processes sharing Redis, the simulator over loopback. A client
drops after N events of a resumable stream on one process and resumes from event N on the other with
`GET /v1/streams/{id}` and `Last-Event-ID`: it gets exactly the remaining events (no gap, no duplicate), byte for
byte as the stream sent them, for every door (Chat Completions, Messages, Responses, compare) and every upstream
dialect. Nobody back within the grace: the upstream is closed and the call booked as 499 with the tokens
produced. Usage is recorded exactly once in every case."""

import re
import time

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Tier
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import usage_events, wait_usage
from tests.support.waiting import eventually

TOKENS = 30
SLOW = f"sim-echo?tokens={TOKENS}&interval_ms=40"
DOORS = {
    "chat": ("/v1/chat/completions", lambda model: {"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    "messages": (
        "/v1/messages",
        lambda model: {"model": model, "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "responses": ("/v1/responses", lambda model: {"model": model, "input": "hi"}),
}
DIALECTS = ("openai", "anthropic", "responses")


@pytest.fixture
def two_gateways(gateway, gateway_factory):
    return gateway, gateway_factory()


@pytest.fixture
def routes(fresh_simulator):
    providers = {
        "openai": provider_create("rs-openai", fresh_simulator.openai_base),
        "anthropic": provider_create("rs-anthropic", fresh_simulator.anthropic_base, dialect="anthropic"),
        "responses": provider_create("rs-responses", fresh_simulator.openai_base, dialect="responses"),
    }
    for dialect, provider in providers.items():
        model_create(f"rs-{dialect}", [(provider, SLOW, 0)])
    return providers


def _headers(key: str, **extra) -> dict:
    return {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01", **extra}


def _events(raw: bytes) -> list[bytes]:
    return [part + b"\n\n" for part in raw.split(b"\n\n") if part]


def _ids(events: list[bytes]) -> list[int]:
    return [int(re.match(rb"id: (\d+)\n", event).group(1)) for event in events if not event.startswith(b":")]


def _read_events(response: httpx.Response, count: int | None = None) -> list[bytes]:
    """Complete SSE events of `response` (comments left out), `count` of them or all."""
    buffer, events = b"", []
    for chunk in response.iter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b":"):
                events.append(event + b"\n\n")
            if count is not None and len(events) == count:
                return events
    return events


def _drop_after(url: str, path: str, key: str, body: dict, count: int, **headers) -> tuple[str, list[bytes], dict]:
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", url + path, json=body, headers=_headers(key, **headers)) as response:
            assert response.status_code == 200, response.read()
            first = _read_events(response, count)
            return response.headers["x-gateway-stream-id"], first, dict(response.headers)


def _resume(url: str, stream_id: str, key: str, last: int | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    with httpx.Client(timeout=30) as client:
        response = client.get(f"{url}/v1/streams/{stream_id}", headers=headers)
        response.read()
        return response


def _text_of(door: str, events: list[bytes]) -> str:
    """The answer's text, assembled from a door's events."""
    text = []
    for event in events:
        data = next((line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")), b"")
        if not data or data == b"[DONE]":
            continue
        payload = orjson.loads(data)
        if door == "chat":
            for choice in payload.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
        elif door == "messages" and payload.get("type") == "content_block_delta":
            text.append(payload["delta"].get("text", ""))
        elif door == "responses" and payload.get("type") == "response.output_text.delta":
            text.append(payload["delta"])
        elif door == "compare" and payload.get("type") == "delta":
            text.append(payload.get("content") or payload.get("text") or "")
    return "".join(text)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("upstream", DIALECTS)
@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_dropped_stream_resumes_on_the_other_process_with_exactly_the_remaining_events(
    two_gateways, routes, fresh_simulator, door, upstream
):
    first_gateway, second_gateway = two_gateways
    key = key_create("resumable")
    path, body_of = DOORS[door]
    body = {**body_of(f"rs-{upstream}"), "stream": True}

    stream_id, first, headers = _drop_after(first_gateway.url, path, key, body, 5, **{"x-gateway-resumable": "true"})
    assert headers["content-type"].startswith("text/event-stream")
    assert _ids(first) == [1, 2, 3, 4, 5]

    resumed = _resume(second_gateway.url, stream_id, key, 5)
    assert resumed.status_code == 200, resumed.text
    assert resumed.headers["x-gateway-stream-id"] == stream_id
    rest = _events(resumed.content)
    rest = [event for event in rest if not event.startswith(b":")]
    ids = _ids(rest)
    assert ids == list(range(6, 6 + len(ids))), ids
    whole = first + rest
    # The whole answer: the simulator's text, once, and the stream's own end.
    reference = _reference(first_gateway.url, path, key, body)
    assert _text_of(door, whole) == _text_of(door, reference)
    assert len(whole) == len(reference)

    # Read again from the start (within the grace): byte for byte what the two clients got.
    again = _resume(first_gateway.url, stream_id, key, None)
    assert _events(again.content) == whole

    # One usage record, a complete one, for the resumable call.
    events = wait_usage(lambda events: len(events) >= 2)
    time.sleep(0.3)
    records = [event for event in usage_events() if event["status_code"] != 0]
    assert len({event["request_id"] for event in records}) == len(records) == 2
    assert {event["status_code"] for event in records} == {200}
    assert all(event["completion_tokens"] >= TOKENS for event in events)


def _reference(url: str, path: str, key: str, body: dict) -> list[bytes]:
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", url + path, json=body, headers=_headers(key)) as response:
            return _read_events(response)


@pytest.mark.django_db(transaction=True)
def test_compare_resumes_through_the_other_process(two_gateways, routes, fresh_simulator):
    first_gateway, second_gateway = two_gateways
    key = key_create("resumable-compare")
    body = {"models": ["rs-openai", "rs-anthropic"], "messages": [{"role": "user", "content": "hi"}], "stream": True}
    stream_id, first, _ = _drop_after(first_gateway.url, "/v1/compare", key, body, 6, **{"x-gateway-resumable": "true"})
    resumed = _resume(second_gateway.url, stream_id, key, 6)
    assert resumed.status_code == 200, resumed.text
    rest = [event for event in _events(resumed.content) if not event.startswith(b":")]
    assert _ids(first + rest) == list(range(1, 1 + len(first) + len(rest)))
    payloads = [orjson.loads(event.split(b"data: ", 1)[1]) for event in first + rest if b"[DONE]" not in event]
    complete = [payload for payload in payloads if isinstance(payload, dict) and payload.get("type") == "complete"]
    assert len(complete) == 1
    assert {result["status"] for result in complete[0]["results"].values()} == {"done"}
    records = wait_usage(lambda events: len(events) == 2)
    assert {event["status_code"] for event in records} == {200}


@pytest.mark.django_db(transaction=True)
def test_nobody_back_within_the_grace_closes_the_upstream_and_books_499_with_the_tokens_produced(
    gateway_factory, fresh_simulator
):
    short = gateway_factory(GATEWAY_RESUME_GRACE_SECONDS="1", GATEWAY_METRICS_TOKEN=METRICS_TOKEN)
    sim = provider_create("rs-grace", fresh_simulator.openai_base)
    model_create("rs-long", [(sim, "sim-echo?tokens=400&interval_ms=25", 0)])
    key = key_create("resumable-grace")
    Tier.objects.filter(name="resumable-grace").update(resumable_streams=True)  # the tier's setting, no header
    body = {"model": "rs-long", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    dropped = time.monotonic()
    stream_id, first, _ = _drop_after(short.url, "/v1/chat/completions", key, body, 3)
    events = wait_usage(lambda events: len(events) == 1, timeout=8)
    took = time.monotonic() - dropped
    (event,) = events
    assert event["status_code"] == 499 and event["error_type"] == "client_disconnected"
    # Tokens went on being produced during the grace (about 40 a second), far from all 400.
    assert 10 < event["completion_tokens"] < 400, event
    assert 1.0 <= took < 6, took
    eventually(
        lambda: _metric(short, "gateway_resumable_streams_total", event="expired") == 1, timeout=3, what="expired"
    )
    # The buffer stays readable for the grace after the stream ended, then a resume is refused.
    eventually(lambda: _resume(short.url, stream_id, key, 3).status_code == 404, timeout=5, what="buffer expired")
    answer = _resume(short.url, stream_id, key, 3)
    assert answer.json()["error"]["code"] == "stream_not_found"


@pytest.mark.django_db(transaction=True)
def test_a_stream_is_resumable_only_by_its_own_key_and_bad_ids_are_refused_in_the_clients_format(
    gateway, routes, fresh_simulator
):
    key = key_create("resumable-owner")
    other = key_create("resumable-other")
    _path, body_of = DOORS["chat"]
    stream_id, _, _ = _drop_after(
        gateway.url, "/v1/chat/completions", key, {**body_of("rs-openai"), "stream": True}, 2,
        **{"x-gateway-resumable": "true"},
    )  # fmt: skip
    refused = _resume(gateway.url, stream_id, other, 2)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "stream_not_found"
    with httpx.Client(timeout=10) as client:
        bad = client.get(
            f"{gateway.url}/v1/streams/{stream_id}", headers={"Authorization": f"Bearer {key}", "Last-Event-ID": "x"}
        )
        assert bad.status_code == 400 and "last event id" in bad.json()["error"]["message"]
        # A digit str.isdigit() takes but int() refuses is refused the same way, never a 500.
        superscript = client.get(
            f"{gateway.url}/v1/streams/{stream_id}?after=%C2%B2", headers={"Authorization": f"Bearer {key}"}
        )
        assert superscript.status_code == 400, superscript.text
        anthropic = client.get(f"{gateway.url}/v1/streams/rs_nope", headers=_headers(key))
        assert anthropic.status_code == 404 and anthropic.json()["error"]["type"] == "not_found_error"
        header = client.post(
            gateway.url + "/v1/chat/completions", json={**body_of("rs-openai"), "stream": True},
            headers={"Authorization": f"Bearer {key}", "x-gateway-resumable": "maybe"},
        )  # fmt: skip
        assert header.status_code == 400 and "x-gateway-resumable" in header.json()["error"]["message"]
        plain = client.post(
            gateway.url + "/v1/chat/completions", json={**body_of("rs-openai"), "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        assert "x-gateway-stream-id" not in plain.headers and b"\nid: " not in plain.content


METRICS_TOKEN = "metrics-token-for-resumable"


def _metric(gateway, name: str, **labels) -> float:
    response = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.django_db(transaction=True)
def test_a_stream_over_its_buffer_cap_goes_on_live_says_so_and_can_no_longer_be_resumed(
    gateway_factory, fresh_simulator
):
    small = gateway_factory(GATEWAY_RESUME_MAX_BYTES="3000", GATEWAY_METRICS_TOKEN=METRICS_TOKEN)
    sim = provider_create("rs-cap", fresh_simulator.openai_base)
    model_create("rs-cap", [(sim, "sim-echo?tokens=60&interval_ms=5", 0)])
    key = key_create("resumable-cap")
    body = {"model": "rs-cap", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {key}", "x-gateway-resumable": "true"}
    with httpx.Client(timeout=30) as client:
        whole = client.post(small.url + "/v1/chat/completions", json=body, headers=headers)
    raw = whole.content
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert b": this stream's resume buffer is full" in raw
    # Every event still came, the ones past the cap too (each with its id).
    events = [event for event in _events(raw) if not event.startswith(b":")]
    assert _ids(events) == list(range(1, len(events) + 1)) and len(events) > 40
    refused = _resume(small.url, whole.headers["x-gateway-stream-id"], key, 1)
    assert refused.status_code == 410 and refused.json()["error"]["code"] == "stream_not_resumable"
    (event,) = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 200

    # The metrics: one opened, then a client that drops and comes back (resumed), and one that never does.
    opened_before = _metric(small, "gateway_resumable_streams_total", event="opened")
    model_create("rs-metric", [(sim, "sim-echo?tokens=60&interval_ms=20", 0)])
    body["model"] = "rs-metric"
    stream_id, _first, _ = _drop_after(small.url, "/v1/chat/completions", key, body, 2, **{"x-gateway-resumable": "1"})
    eventually(lambda: _metric(small, "gateway_resumable_streams_open") == 1, timeout=3, what="one open")
    assert _resume(small.url, stream_id, key, 2).status_code == 200
    eventually(
        lambda: (
            _metric(small, "gateway_resumable_streams_total", event="resumed") == 1
            and _metric(small, "gateway_resumable_streams_total", event="opened") == opened_before + 1
            and _metric(small, "gateway_resumable_streams_open") == 0
        ),
        timeout=5,
        what="resumed counted, none open",
    )
