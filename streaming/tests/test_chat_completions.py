"""/v1/chat/completions end to end: official SDK -> gateway process -> simulator, over loopback."""

import asyncio
import statistics
import time

import httpx
import openai
import orjson
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.ports import free_port
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me something about streams"}]


@pytest.fixture
def setup(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo", 0)])
    model_create("sim-slow", [(sim, "sim-echo?tokens=20&interval_ms=100", 0)])
    model_create("sim-long", [(sim, "sim-echo?tokens=200&interval_ms=20", 0)])
    key = key_create("free")
    return key, sim


def stream_text(stream) -> tuple[str, list]:
    text, chunks = [], []
    for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
    return "".join(text), chunks


@pytest.mark.parametrize("include_usage", [False, True])
def test_sdk_sync_streams_identical_content(gateway, setup, fresh_simulator, include_usage):
    key, _ = setup
    through = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    direct = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    text_gw, chunks_gw = stream_text(
        through.chat.completions.create(model="sim-fast", messages=MESSAGES, stream=True, **options)
    )
    text_direct, chunks_direct = stream_text(
        direct.chat.completions.create(model="sim-echo", messages=MESSAGES, stream=True, **options)
    )
    assert text_gw and text_gw == text_direct
    assert len(chunks_gw) == len(chunks_direct)
    assert {c.model for c in chunks_gw} == {"sim-fast"}
    usage_gw = [c.usage for c in chunks_gw if c.usage]
    usage_direct = [c.usage for c in chunks_direct if c.usage]
    assert usage_gw == usage_direct
    assert bool(usage_gw) is include_usage
    # We always asked the upstream for usage, whatever the client asked for.
    sent = fresh_simulator.requests(model="sim-echo")[0]["body"]
    assert sent["stream_options"]["include_usage"] is True


def test_sdk_sync_non_stream_identical(gateway, setup, fresh_simulator):
    key, _ = setup
    through = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    direct = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    got = through.chat.completions.with_raw_response.create(model="sim-fast", messages=MESSAGES)
    completion = got.parse()
    expected = direct.chat.completions.create(model="sim-echo", messages=MESSAGES)
    assert completion.choices[0].message.content == expected.choices[0].message.content
    assert completion.usage == expected.usage
    assert completion.model == "sim-fast"
    assert got.headers["x-gateway-provider"] == "sim"
    assert got.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("include_usage", [False, True])
async def test_sdk_async_identical(gateway, setup, fresh_simulator, include_usage):
    key, _ = setup
    through = openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    direct = openai.AsyncOpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}

    async def collect(client, model):
        parts, usage = [], []
        async for chunk in await client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **options):
            usage += [chunk.usage] if chunk.usage else []
            parts += [c.delta.content for c in chunk.choices if c.delta.content]
        return "".join(parts), usage

    assert await collect(through, "sim-fast") == await collect(direct, "sim-echo")
    plain_gw = await through.chat.completions.create(model="sim-fast", messages=MESSAGES)
    plain_direct = await direct.chat.completions.create(model="sim-echo", messages=MESSAGES)
    assert plain_gw.choices[0].message.content == plain_direct.choices[0].message.content
    await through.close()
    await direct.close()


def test_each_event_arrives_on_its_own_at_upstream_pace(gateway, setup):
    key, _ = setup
    arrivals = []
    body = {"model": "sim-slow", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST",
        gateway.openai_base + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        for raw in response.iter_raw():
            if b'"content":"' in raw and b'"content":""' not in raw:
                arrivals.append((time.perf_counter(), raw.count(b"data: ")))
    # 20 tokens, 20 separate network reads, each one event, ~100 ms apart.
    assert len(arrivals) == 20
    assert all(count == 1 for _, count in arrivals)
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert 70 <= statistics.median(gaps) <= 160
    assert min(gaps) >= 30, gaps


@pytest.mark.parametrize("failure", ["fail=500", "fail=503", "fail=429", "refused", "timeout"])
@pytest.mark.parametrize("stream", [False, True])
def test_failing_first_deployment_is_invisible(gateway, fresh_simulator, failure, stream):
    if failure == "refused":
        broken = provider_create("broken", f"http://127.0.0.1:{free_port()}/v1")
        first = (broken, "sim-echo", 0)
    elif failure == "timeout":
        broken = provider_create("broken", fresh_simulator.openai_base, timeout_read=0.5)
        first = (broken, "sim-echo?hang=1", 0)
    else:
        broken = provider_create("broken", fresh_simulator.openai_base)
        first = (broken, f"sim-echo?{failure}", 0)
    good = provider_create("good", fresh_simulator.openai_base)
    model_create("sim-failover", [first, (good, "sim-echo", 1)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    expected = (
        openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x")
        .chat.completions.create(model="sim-echo", messages=MESSAGES)
        .choices[0]
        .message.content
    )
    if stream:
        raw = client.chat.completions.with_raw_response.create(model="sim-failover", messages=MESSAGES, stream=True)
        text, _ = stream_text(raw.parse())
    else:
        raw = client.chat.completions.with_raw_response.create(model="sim-failover", messages=MESSAGES)
        text = raw.parse().choices[0].message.content
    assert text == expected
    assert raw.headers["x-gateway-provider"] == "good"
    if failure not in ("refused",):
        assert fresh_simulator.requests(model=first[1]), "the first deployment was tried"
    event = wait_usage(lambda events: len(events) == 1)[0]
    assert event["attempts"] == 2 and event["provider"] == "good" and event["status_code"] == 200


def test_client_disconnect_closes_upstream_quickly(gateway, setup, fresh_simulator):
    key, _ = setup
    body = {"model": "sim-long", "messages": MESSAGES, "stream": True}
    events = 0
    with httpx.stream(
        "POST",
        gateway.openai_base + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        for raw in response.iter_raw():
            events += raw.count(b"data: ")
            if events >= 3:
                break
        closed_at = time.time()
    records = fresh_simulator.wait_for_requests(
        lambda rs: rs and rs[-1]["disconnected"], timeout=2.0, model="sim-echo?tokens=200&interval_ms=20"
    )
    record = records[-1]
    assert record["disconnected_at"] - closed_at < 1.0
    assert record["events_sent"] < 200
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["status_code"] == 499
    assert event["completion_tokens"] >= 2
    assert event["chunk_count"] >= 3


def test_fifty_concurrent_streams(gateway, setup, fresh_simulator):
    key, _ = setup

    async def one(client, model, index):
        messages = [{"role": "user", "content": f"stream number {index}"}]
        parts = []
        async for chunk in await client.chat.completions.create(model=model, messages=messages, stream=True):
            parts += [c.delta.content for c in chunk.choices if c.delta.content]
        return "".join(parts)

    async def run():
        async with (
            openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0) as through,
            openai.AsyncOpenAI(base_url=fresh_simulator.openai_base, api_key="x") as direct,
        ):
            got = await asyncio.gather(*(one(through, "sim-fast", i) for i in range(50)))
            want = await asyncio.gather(*(one(direct, "sim-echo", i) for i in range(50)))
            return got, want

    got, want = asyncio.run(run())
    assert got == want
    assert len(set(got)) > 10


def test_body_passes_through_with_model_rewritten_and_tokens_capped(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo", 0)])
    key = key_create("capped", max_output_tokens=5)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = {
        "model": "sim-fast",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": tools,
        "tool_choice": "auto",
        "temperature": 0.2,
        "seed": 7,
        "user": "u1",
        "stop": ["zz"],
        "n": 1,
        "response_format": {"type": "text"},
        "x_custom_field": {"kept": True},
        "max_tokens": 50,
    }
    response = httpx.post(
        gateway.openai_base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == "sim-fast"
    assert data["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    sent = fresh_simulator.requests(model="sim-echo")[-1]["body"]
    expected = {**body, "model": "sim-echo", "max_tokens": 5}
    assert sent == expected
    # x-api-key works too, and a plain request without max tokens gets the cap added.
    response = httpx.post(
        gateway.openai_base + "/chat/completions",
        json={"model": "sim-fast", "messages": MESSAGES},
        headers={"x-api-key": key},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 5
    assert fresh_simulator.requests(model="sim-echo")[-1]["body"]["max_tokens"] == 5


def test_mid_stream_failure_becomes_error_event(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    other = provider_create("other", fresh_simulator.openai_base)
    model_create("sim-drop", [(sim, "sim-echo?drop_after=3&tokens=10", 0), (other, "sim-echo", 1)])
    key = key_create("free")
    body = {"model": "sim-drop", "messages": MESSAGES, "stream": True}
    response = httpx.post(
        gateway.openai_base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200
    datas = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    error = orjson.loads(datas[-2])["error"]
    assert "mid-stream" in error["message"] and error["code"] == "upstream_stream_error"
    # Said in the client's terms: no transport internals.
    assert "Error" not in error["message"] and "message=" not in error["message"], error["message"]
    contents = [orjson.loads(d)["choices"][0]["delta"].get("content") for d in datas[:-2]]
    assert len([c for c in contents if c]) == 3
    # After the first byte there is no failover: the second deployment was never called.
    assert not fresh_simulator.requests(model="sim-echo")
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["status_code"] == 502 and event["error_type"] == "upstream_stream_error"


def test_openai_sdk_reports_mid_stream_error(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-drop", [(sim, "sim-echo?drop_after=2", 0)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    with pytest.raises(openai.APIError, match="mid-stream"):
        stream_text(client.chat.completions.create(model="sim-drop", messages=MESSAGES, stream=True))


def test_missing_upstream_usage_is_estimated(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-nousage", [(sim, "sim-echo?no_usage=1&tokens=8", 0)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    text, chunks = stream_text(client.chat.completions.create(model="sim-nousage", messages=MESSAGES, stream=True))
    assert text
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["tokens_estimated"] is True
    assert 6 <= event["completion_tokens"] <= 12
    assert event["prompt_tokens"] > 5


def test_stream_metrics_on_usage_event(gateway, setup):
    key, _ = setup
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    stream_text(client.chat.completions.create(model="sim-slow", messages=MESSAGES, stream=True))
    event = wait_usage(lambda evs: len(evs) == 1)[0]
    assert event["status_code"] == 200 and event["tokens_estimated"] is False
    assert event["completion_tokens"] == 20
    assert event["chunk_count"] == 23  # role chunk, 20 tokens, finish chunk, [DONE]; usage chunk swallowed
    assert 0 < event["ttfb_upstream_ms"] <= event["ttfb_ms"] < 1000
    assert 70 <= event["interval_p50_ms"] <= 160
    assert event["zero_interval_share"] < 0.2
    assert event["duration_ms"] >= 1900


def test_breaker_opens_after_repeated_failures(gateway_factory, fresh_simulator):
    gw = gateway_factory(GATEWAY_BREAKER_FAILURES="2", GATEWAY_BREAKER_COOLDOWN_SECONDS="30")
    broken = provider_create("broken", fresh_simulator.openai_base)
    good = provider_create("good", fresh_simulator.openai_base)
    model_create("sim-failover", [(broken, "sim-echo?fail=500", 0), (good, "sim-echo", 1)])
    key = key_create("free")
    client = openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)
    for _ in range(5):
        client.chat.completions.create(model="sim-failover", messages=MESSAGES)
        time.sleep(0.6)  # let the short availability cache expire
    assert len(fresh_simulator.requests(model="sim-echo?fail=500")) == 2
    assert len(fresh_simulator.requests(model="sim-echo")) == 5


def test_models_lists_what_the_key_may_use(gateway, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    fast = model_create("sim-fast", [(sim, "sim-echo", 0)])
    model_create("sim-secret", [(sim, "sim-echo", 0)])
    limited = key_create("limited", models=[fast])
    open_key = key_create("open")
    ids = [m.id for m in openai.OpenAI(base_url=gateway.openai_base, api_key=limited).models.list()]
    assert ids == ["sim-fast"]
    ids = [m.id for m in openai.OpenAI(base_url=gateway.openai_base, api_key=open_key).models.list()]
    assert ids == ["sim-fast", "sim-secret"]
    with pytest.raises(openai.PermissionDeniedError, match="does not allow the model 'sim-secret'"):
        openai.OpenAI(base_url=gateway.openai_base, api_key=limited, max_retries=0).chat.completions.create(
            model="sim-secret", messages=MESSAGES
        )
