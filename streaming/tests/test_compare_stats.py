"""What a compare run tells about each model, as a playground shows it: the time to the first token on that token's
own frame (the figure the done event reports), what a failed or cut-off model bills, speeds only where they mean
something, tool calls, images, and parameters per model. A gateway process, the simulator, real Redis, over
loopback HTTP."""

from decimal import Decimal

import orjson
import pytest

from aigateway.errors import GatewayError
from streaming.compare import compare_calls
from tests.support.compare import compare_stream
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Compare these, please"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
# A 1x1 PNG.
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PRICES = {"input_price_per_million": 3, "output_price_per_million": 15}


@pytest.fixture
def models(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    return {
        # The first reasoning token comes 250 ms after the request: a time to first byte would be far shorter.
        "thinker": model_create("thinker", [(sim, "sim-echo?tokens=6&reasoning=4&ttft_ms=250&interval_ms=30", 0)]),
        "thinker-claude": model_create(
            "thinker-claude", [(claude, "sim-claude?tokens=6&reasoning=4&ttft_ms=250&interval_ms=30", 0)]
        ),
        "steady": model_create("steady", [(sim, "sim-echo?tokens=12&interval_ms=40", 0)], **PRICES),
        "blink": model_create("blink", [(sim, "sim-echo?tokens=3&interval_ms=5", 0)]),
        "dropper": model_create("dropper", [(sim, "sim-echo?tokens=20&interval_ms=20&drop_after=6", 0)], **PRICES),
        "dropper-claude": model_create(
            "dropper-claude", [(claude, "sim-claude?tokens=20&interval_ms=20&drop_after=6", 0)], **PRICES
        ),
        "tooler": model_create("tooler", [(sim, "sim-echo?tokens=4&interval_ms=10", 0)]),
        "tooler-claude": model_create("tooler-claude", [(claude, "sim-claude?tokens=4&interval_ms=10", 0)]),
        "seer": model_create("seer", [(sim, "sim-echo?tokens=3", 0)], kinds=["chat", "vision"]),
    }


@pytest.mark.parametrize("model", ["thinker", "thinker-claude"])
def test_the_first_reasoning_frame_carries_the_time_to_first_token_the_done_event_reports(gateway, models, model):
    key = key_create("free")
    got = compare_stream(gateway.url, key, {"models": [model], "messages": MESSAGES})
    frames = [e for e in got.of(model) if e["type"] in ("chunk", "reasoning")]
    assert frames[0]["type"] == "reasoning"
    first = frames[0]["ttft_ms"]
    done = got.of(model, "done")[0]
    assert done["ttft_ms"] == first
    # The time to the first token, not to the first byte: the simulator waited 250 ms before its first token.
    assert 250 <= first < 2000
    # Only the first frame of output carries it.
    assert all("ttft_ms" not in frame for frame in frames[1:])


def test_a_speed_only_over_enough_tokens_and_time(gateway, models):
    key = key_create("free", max_compare_models=4)
    got = compare_stream(gateway.url, key, {"models": ["steady", "blink"], "messages": MESSAGES})
    steady = got.of("steady", "done")[0]
    # 12 tokens, 40 ms apart: about 25 tokens a second (12 over the ~440 ms from the first token to the end).
    assert 12 < steady["tokens_per_s"] < 35, steady
    blink = got.of("blink", "done")[0]
    assert blink["usage"]["completion_tokens"] == 3  # fewer than streaming.compare.SPEED_MIN_TOKENS
    assert blink["tokens_per_s"] is None and blink["ttft_ms"] is not None


def test_an_answer_from_the_cache_arrives_in_one_piece_and_has_no_speed(gateway, models):
    key = key_create("cached", cache_ttl_seconds=300)
    body = {"models": ["steady"], "messages": MESSAGES}
    first = compare_stream(gateway.url, key, body)
    assert first.of("steady", "start")[0]["cache"] == "miss"
    wait_usage(lambda evs: any(e.get("run_id") == first.headers["x-gateway-run-id"] for e in evs))
    again = compare_stream(gateway.url, key, body)
    assert again.of("steady", "start")[0]["cache"] == "hit"
    done = again.of("steady", "done")[0]
    assert done["cached"] is True and done["cost"] == 0
    assert done["tokens_per_s"] is None
    assert done["ttft_ms"] == again.of("steady", "chunk")[0]["ttft_ms"]


@pytest.mark.parametrize("model", ["dropper", "dropper-claude"])
def test_a_model_cut_off_mid_stream_reports_what_its_record_bills(gateway, models, model):
    key = key_create("free")
    got = compare_stream(gateway.url, key, {"models": [model], "messages": MESSAGES})
    [error] = got.of(model, "error")
    assert error["code"] == "upstream_stream_error"
    assert error["ttft_ms"] == got.of(model, "chunk")[0]["ttft_ms"]
    run_id = got.headers["x-gateway-run-id"]
    [record] = [e for e in wait_usage(lambda evs: any(e["run_id"] == run_id for e in evs)) if e["run_id"] == run_id]
    assert record["status_code"] == 502
    assert error["usage"]["completion_tokens"] == record["completion_tokens"] >= 6
    assert error["usage"]["prompt_tokens"] == record["prompt_tokens"] > 0
    assert error["tokens_estimated"] == record["tokens_estimated"]
    assert Decimal(str(error["cost"])) == Decimal(record["cost"]) > 0


def test_a_refused_model_bills_nothing_and_says_so(gateway, models):
    key = key_create("one-rpm", rpm=1, max_compare_models=4)
    got = compare_stream(gateway.url, key, {"models": ["steady", "dropper"], "messages": MESSAGES})
    [error] = [e for e in got.events if e["type"] == "error"]
    assert error["status"] == 429
    assert error["cost"] == 0 and error["usage"]["total_tokens"] == 0 and error["ttft_ms"] is None


@pytest.mark.parametrize("model", ["tooler", "tooler-claude"])
def test_tool_calls_arrive_as_frames_and_in_the_done_event(gateway, models, fresh_simulator, model):
    key = key_create("free")
    got = compare_stream(gateway.url, key, {"models": [model], "messages": WEATHER, "tools": TOOLS})
    calls = got.of(model, "tool_call")
    assert calls and calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert "ttft_ms" in calls[0]
    arguments = "".join(frame["arguments"] for frame in calls)
    assert orjson.loads(arguments) == {"location": "Paris"}
    done = got.of(model, "done")[0]
    assert done["finish_reason"] == "tool_calls"
    assert done["tool_calls"] == [
        {"id": calls[0]["id"], "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    ]
    assert done["ttft_ms"] == calls[0]["ttft_ms"]

    # The next turn sends the call back with its result, as the playground does: the model answers in text.
    history = [
        *WEATHER,
        {"role": "assistant", "content": None, "tool_calls": done["tool_calls"]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature": 21}'},
    ]
    second = compare_stream(gateway.url, key, {"models": [model], "messages": history, "tools": TOOLS})
    assert second.of(model, "done")[0]["finish_reason"] == "stop", second.events
    assert len(second.text(model).split()) == 4
    sent = fresh_simulator.requests()[-1]["body"]
    if model == "tooler":
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": calls[0]["id"],
            "content": '{"temperature": 21}',
        }
        assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    else:
        result = sent["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == calls[0]["id"]
        assert sent["messages"][-2]["content"][-1]["type"] == "tool_use"


def test_an_image_part_reaches_a_vision_model(gateway, models, fresh_simulator):
    key = key_create("free")
    content = [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]
    got = compare_stream(gateway.url, key, {"models": ["seer"], "messages": [{"role": "user", "content": content}]})
    assert got.of("seer", "done"), got.events
    [request] = fresh_simulator.requests(model="sim-echo?tokens=3")
    parts = request["body"]["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": PIXEL}} in [
        {"type": part["type"], "image_url": {"url": part["image_url"]["url"]}} for part in parts if "image_url" in part
    ]


def test_each_model_gets_its_own_parameters_over_the_shared_ones(gateway, models, fresh_simulator):
    key = key_create("free", max_compare_models=4)
    schema = {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
    body = {
        "models": ["steady", "blink"],
        "messages": MESSAGES,
        "temperature": 0.9,
        "max_tokens": 50,
        "params_by_model": {
            "blink": {
                "temperature": 0.1,
                "top_p": 0.5,
                "seed": 7,
                "stop": ["END"],
                "response_format": {"type": "json_schema", "json_schema": schema},
            }
        },
    }
    got = compare_stream(gateway.url, key, body)
    assert got.of("steady", "done") and got.of("blink", "done"), got.events
    steady = fresh_simulator.requests(model="sim-echo?tokens=12&interval_ms=40")[-1]["body"]
    blink = fresh_simulator.requests(model="sim-echo?tokens=3&interval_ms=5")[-1]["body"]
    assert steady["temperature"] == 0.9 and steady["max_tokens"] == 50
    assert not {"top_p", "seed", "stop", "response_format"} & set(steady)
    assert blink["temperature"] == 0.1 and blink["max_tokens"] == 50
    assert blink["top_p"] == 0.5 and blink["seed"] == 7 and blink["stop"] == ["END"]
    assert blink["response_format"]["json_schema"]["name"] == "answer"


@pytest.mark.parametrize(
    ("params_by_model", "param", "complaint"),
    [
        ("warm", "params_by_model", "must be an object"),
        ({"c": {"temperature": 1}}, "params_by_model", "'c', which is not in 'models'"),
        ({"a": 0.5}, "params_by_model.a", "must be an object of chat parameters"),
        ({"a": {"messages": []}}, "params_by_model.a", "cannot set 'messages'"),
        ({"b": {"max_tokens": 0}}, "params_by_model.b.max_tokens", "'params_by_model.b':"),
    ],
)
def test_parameters_per_model_are_checked_like_the_shared_ones(params_by_model, param, complaint):
    with pytest.raises(GatewayError) as raised:
        compare_calls({"models": ["a", "b"], "messages": MESSAGES, "params_by_model": params_by_model}, cap=4)
    assert (raised.value.status, raised.value.param) == (400, param)
    assert complaint in raised.value.message
