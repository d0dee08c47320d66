"""/v1/compare end to end: a gateway process, the simulator, real Redis, over loopback HTTP."""

import statistics
import time

import openai
import orjson
import pytest

from tests.support.compare import compare_stream
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Compare these, please"}]


@pytest.fixture
def models(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    created = {
        "fast-a": model_create("fast-a", [(sim, "sim-echo?tokens=8&interval_ms=30", 0)]),
        "fast-b": model_create("fast-b", [(claude, "sim-claude?tokens=6&interval_ms=40", 0)]),
        "broken": model_create("broken", [(sim, "sim-echo?fail=500", 0)]),
        "drops": model_create("drops", [(sim, "sim-echo?tokens=10&interval_ms=10&drop_after=3", 0)]),
        "thinker": model_create("thinker", [(sim, "sim-echo?tokens=4&reasoning=3", 0)]),
        "thinker-claude": model_create("thinker-claude", [(claude, "sim-claude?tokens=4&reasoning=3", 0)]),
        "slow-1": model_create("slow-1", [(sim, "sim-echo?tokens=60&interval_ms=100", 0)]),
        "slow-2": model_create("slow-2", [(claude, "sim-claude?tokens=61&interval_ms=100", 0)]),
        "drip": model_create(
            "drip",
            [(sim, "sim-echo?tokens=8&interval_ms=100", 0)],
            input_price_per_million=2,
            output_price_per_million=4,
        ),
    }
    return created


def test_two_models_interleave_and_match_the_direct_answers(gateway, models, fresh_simulator):
    key = key_create("free", max_compare_models=4)
    got = compare_stream(gateway.url, key, {"models": ["fast-a", "fast-b"], "messages": MESSAGES, "temperature": 0.2})
    assert got.status == 200, got.body
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["x-accel-buffering"] == "no"
    run_id = got.headers["x-gateway-run-id"]
    assert run_id.startswith("cmp_")
    assert got.done_marker and got.events[-1]["type"] == "complete"

    direct_openai = openai.OpenAI(base_url=fresh_simulator.openai_base, api_key="x", max_retries=0)
    expected_a = direct_openai.chat.completions.create(model="sim-echo?tokens=8&interval_ms=30", messages=MESSAGES)
    assert got.text("fast-a") == expected_a.choices[0].message.content
    assert len(got.text("fast-b").split()) == 6
    for model in ("fast-a", "fast-b"):
        kinds = got.kinds(model)
        assert kinds[0] == "start" and kinds[-1] == "done", kinds
        assert set(kinds[1:-1]) == {"chunk"}
        done = got.of(model, "done")[0]
        assert done["finish_reason"] == "stop"
        assert done["usage"]["completion_tokens"] == len(got.of(model, "chunk"))
        assert done["ttft_ms"] > 0 and done["duration_ms"] >= done["ttft_ms"] and done["tokens_per_s"] > 0
    # Neither model waited for the other: their chunks are interleaved, not one block after the other.
    order = [e["model"] for e in got.events if e["type"] == "chunk"]
    assert order != sorted(order) and order != sorted(order, reverse=True)
    results = got.events[-1]["results"]
    assert {name: r["status"] for name, r in results.items()} == {"fast-a": "done", "fast-b": "done"}
    assert got.events[-1]["run_id"] == run_id

    events = wait_usage(lambda evs: len([e for e in evs if e["run_id"] == run_id]) == 2)
    records = {e["model"]: e for e in events if e["run_id"] == run_id}
    for model in ("fast-a", "fast-b"):
        done = got.of(model, "done")[0]
        assert records[model]["endpoint"] == "compare"
        assert records[model]["status_code"] == 200
        assert records[model]["request_id"] == done["request_id"] == got.of(model, "start")[0]["request_id"]
        assert records[model]["prompt_tokens"] == done["usage"]["prompt_tokens"]
        assert records[model]["completion_tokens"] == done["usage"]["completion_tokens"]
    # The upstream request carried the shared parameters.
    sent = fresh_simulator.requests(model="sim-echo?tokens=8&interval_ms=30")[0]["body"]
    assert sent["temperature"] == 0.2 and sent["stream"] is True


def test_a_failing_model_never_stops_the_others(gateway, models):
    key = key_create("free", max_compare_models=4)
    got = compare_stream(gateway.url, key, {"models": ["fast-a", "broken", "drops"], "messages": MESSAGES})
    assert got.status == 200
    assert got.of("fast-a", "done"), got.events
    assert len(got.text("fast-a").split()) == 8
    broken = got.of("broken", "error")
    assert len(broken) == 1 and broken[0]["status"] == 502 and "broken" in broken[0]["message"]
    assert not got.of("broken", "chunk")
    # After its first bytes: the chunks it sent, then an error event for that model only.
    assert got.kinds("drops")[-1] == "error" and got.of("drops", "chunk")
    assert got.of("drops", "error")[0]["code"] == "upstream_stream_error"
    results = got.events[-1]["results"]
    assert {name: r["status"] for name, r in results.items()} == {
        "fast-a": "done",
        "broken": "error",
        "drops": "error",
    }
    run_id = got.headers["x-gateway-run-id"]
    events = wait_usage(lambda evs: len([e for e in evs if e["run_id"] == run_id]) == 3)
    status = {e["model"]: e["status_code"] for e in events if e["run_id"] == run_id}
    assert status == {"fast-a": 200, "broken": 502, "drops": 502}


@pytest.mark.parametrize("model", ["thinker", "thinker-claude"])
def test_reasoning_arrives_apart_from_the_answer(gateway, models, model):
    key = key_create("free")
    got = compare_stream(gateway.url, key, {"models": [model], "messages": MESSAGES, "max_tokens": 64})
    kinds = got.kinds(model)
    assert kinds[:4] == ["start", "reasoning", "reasoning", "reasoning"], kinds
    assert "".join(e["content"] for e in got.of(model, "reasoning")) == " step1 step2 step3"
    assert len(got.text(model).split()) == 4
    assert got.of(model, "done")[0]["usage"]["completion_tokens"] == 7


def test_a_limit_refuses_one_model_and_the_other_runs(gateway, models):
    key = key_create("one-rpm", rpm=1, max_compare_models=4)
    got = compare_stream(gateway.url, key, {"models": ["fast-a", "fast-b"], "messages": MESSAGES})
    assert got.status == 200
    errors = [e for e in got.events if e["type"] == "error"]
    done = [e for e in got.events if e["type"] == "done"]
    assert len(errors) == 1 and len(done) == 1
    assert errors[0]["status"] == 429 and errors[0]["code"] == "rate_limit_exceeded"
    refused = errors[0]["model"]
    assert not got.of(refused, "start") and not got.of(refused, "chunk")
    assert got.events[-1]["results"][refused]["status"] == "error"


def _error(got) -> dict:
    assert got.headers["content-type"] == "application/json", got.body
    return orjson.loads(got.body)["error"]


def test_refused_up_front_with_the_chat_endpoint_errors(gateway, models):
    key = key_create("capped", max_compare_models=2, models=[models["fast-a"], models["fast-b"], models["drip"]])
    too_many = compare_stream(gateway.url, key, {"models": ["fast-a", "fast-b", "drip"], "messages": MESSAGES})
    assert too_many.status == 400 and "at most 2 models" in _error(too_many)["message"]
    unknown = compare_stream(gateway.url, key, {"models": ["fast-a", "no-such-model"], "messages": MESSAGES})
    assert unknown.status == 404 and "no-such-model" in _error(unknown)["message"]
    disallowed = compare_stream(gateway.url, key, {"models": ["fast-a", "broken"], "messages": MESSAGES})
    assert disallowed.status == 403 and "broken" in _error(disallowed)["message"]
    cases = [
        ({"messages": MESSAGES}, "'models' is required"),
        ({"models": [], "messages": MESSAGES}, "non-empty array"),
        ({"models": ["fast-a", "fast-a"], "messages": MESSAGES}, "more than once"),
        ({"models": ["fast-a", 3], "messages": MESSAGES}, "models[1]"),
        ({"models": ["fast-a"]}, "'messages'"),
        ({"models": ["fast-a"], "messages": "hi"}, "must be an array"),
        ({"models": ["fast-a"], "messages_by_model": {"fast-b": MESSAGES}}, "does not match"),
        ({"models": ["fast-a"], "messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
    ]
    for body, needle in cases:
        got = compare_stream(gateway.url, key, body)
        assert got.status == 400, (body, got.body)
        assert needle in _error(got)["message"], (body, got.body)
    assert compare_stream(gateway.url, "sk-gw-" + "x" * 40, {"models": ["fast-a"], "messages": MESSAGES}).status == 401


def test_client_disconnect_cancels_every_upstream_within_100ms(gateway, models, fresh_simulator):
    key = key_create("free")
    body = {"models": ["slow-1", "slow-2"], "messages": MESSAGES}
    got = compare_stream(
        gateway.url,
        key,
        body,
        stop_when=lambda s: len(s.of("slow-1", "chunk")) >= 3 and len(s.of("slow-2", "chunk")) >= 3,
    )
    upstream = ("sim-echo?tokens=60&interval_ms=100", "sim-claude?tokens=61&interval_ms=100")

    def both_closed(recs):
        return len([r for r in recs if r["model"] in upstream and r["disconnected"]]) == 2

    records = [r for r in fresh_simulator.wait_for_requests(both_closed, timeout=3.0) if r["model"] in upstream]
    assert len(records) == 2
    for record in records:
        assert record["disconnected_at"] - got.closed_at < 0.1, (record, got.closed_at)
        assert record["tokens_sent"] < 20
    run_id = got.headers["x-gateway-run-id"]
    events = wait_usage(lambda evs: len([e for e in evs if e["run_id"] == run_id]) == 2)
    for event in (e for e in events if e["run_id"] == run_id):
        assert event["status_code"] == 499
        seen = len(got.of(event["model"], "chunk"))
        assert seen <= event["completion_tokens"] <= seen + 3, (event, seen)


def test_a_100ms_drip_arrives_as_100ms_gaps_in_every_column(gateway, models, fresh_simulator):
    key = key_create("free")
    got = compare_stream(gateway.url, key, {"models": ["drip", "fast-a", "slow-1"], "messages": MESSAGES,
                                            "max_tokens": 8})  # fmt: skip
    gaps = [b - a for a, b in zip(got.arrival_times("drip"), got.arrival_times("drip")[1:], strict=False)]
    assert len(gaps) == 7
    assert 0.07 < statistics.median(gaps) < 0.14, gaps
    slow_gaps = [b - a for a, b in zip(got.arrival_times("slow-1"), got.arrival_times("slow-1")[1:], strict=False)]
    assert 0.07 < statistics.median(slow_gaps) < 0.14, slow_gaps
    done = got.of("drip", "done")[0]
    # 2 $/M input, 4 $/M output.
    expected = (done["usage"]["prompt_tokens"] * 2 + done["usage"]["completion_tokens"] * 4) / 1_000_000
    assert done["cost"] == pytest.approx(expected)
    assert 0.6 < (done["duration_ms"] - done["ttft_ms"]) / 1000 < 1.2
    assert time.perf_counter() - got.arrivals[0] < 60
