"""Cache reads, cache writes and reasoning tokens: each dialect parses them from its provider's usage and
renders them to its clients, whichever dialect the provider spoke; the simulator reports them on demand."""

import httpx
import orjson

from providers.dialects.anthropic import anthropic
from providers.dialects.canonical import ChatResponse, Finish, Start, Text, TextDelta, Usage, UsageReport
from providers.dialects.openai import openai
from providers.dialects.responses import responses

# 150 prompt tokens: 100 uncached, 30 read from the cache, 20 written to it; 40 output tokens, 25 reasoning.
USAGE = Usage(prompt_tokens=150, completion_tokens=40, cached_tokens=30, cache_write_tokens=20, reasoning_tokens=25)
OPENAI_USAGE = {
    "prompt_tokens": 150,
    "completion_tokens": 40,
    "total_tokens": 190,
    "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
    "completion_tokens_details": {"reasoning_tokens": 25},
}
ANTHROPIC_USAGE = {
    "input_tokens": 100,
    "cache_read_input_tokens": 30,
    "cache_creation_input_tokens": 20,
    "output_tokens": 40,
}


def test_openai_usage_parses_cache_reads_writes_and_reasoning():
    assert openai.response_usage({"usage": OPENAI_USAGE}) == USAGE
    plain = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert openai.response_usage({"usage": plain}) == Usage(9, 2)
    # Not numbers: not counts.
    odd = {**plain, "completion_tokens_details": {"reasoning_tokens": "many"}, "prompt_tokens_details": None}
    assert openai.response_usage({"usage": odd}) == Usage(9, 2)


def test_openai_stream_usage_chunk_reports_every_part():
    parser = openai.stream_parser()
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": OPENAI_USAGE}
    _, events = parser.feed(None, orjson.dumps(chunk).decode())
    assert events[-1:] == [UsageReport(150, 40, 30, cache_write_tokens=20, reasoning_tokens=25)]


def test_anthropic_usage_counts_cache_reads_and_writes_in_the_prompt():
    # Anthropic's input_tokens leaves cache reads and writes out; the canonical prompt is the whole prompt.
    assert anthropic.response_usage({"usage": ANTHROPIC_USAGE}) == Usage(150, 40, 30, 20)


def test_anthropic_stream_keeps_the_cache_counts_of_message_start():
    parser = anthropic.stream_parser()
    start = {"type": "message_start", "message": {"id": "msg_1", "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}}
    events = parser.feed("message_start", orjson.dumps(start).decode())[1]
    events += parser.feed("message_delta", orjson.dumps(delta).decode())[1]
    reports = [event for event in events if isinstance(event, UsageReport)]
    assert reports == [
        UsageReport(150, None, 30, cache_write_tokens=20),
        UsageReport(150, 40, 30, cache_write_tokens=20),
    ]


def test_an_openai_client_of_an_anthropic_provider_sees_cache_counts():
    reply = anthropic.parse_response(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": ANTHROPIC_USAGE,
        }
    )
    usage = openai.render_response(reply, model="m")["usage"]
    assert usage == {
        "prompt_tokens": 150,
        "completion_tokens": 40,
        "total_tokens": 190,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
    }


def test_an_openai_client_sees_reasoning_tokens_rendered():
    body = openai.render_response(
        ChatResponse(id="x", parts=[Text("hi")], finish_reason="stop", usage=USAGE), model="m"
    )
    assert body["usage"] == OPENAI_USAGE

    renderer = openai.stream_renderer(model="m", include_usage=True)
    out = renderer.render(Start("x")) + renderer.render(TextDelta("hi")) + renderer.render(Finish("stop"))
    out += renderer.render(UsageReport(150, 40, 30, cache_write_tokens=20, reasoning_tokens=25)) + renderer.close()
    chunks = [orjson.loads(chunk.removeprefix(b"data: ")) for chunk in out if not chunk.startswith(b"data: [DONE]")]
    assert chunks[-1]["usage"] == OPENAI_USAGE


def test_an_anthropic_client_of_an_openai_provider_sees_cache_reads_and_writes():
    reply = openai.parse_response(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": OPENAI_USAGE,
        }
    )
    assert reply.usage == USAGE
    assert anthropic.render_response(reply, model="m")["usage"] == ANTHROPIC_USAGE

    renderer = anthropic.stream_renderer(model="m", include_usage=True, prompt_estimate=7)
    out = renderer.render(Start("chatcmpl-1")) + renderer.render(TextDelta("hi")) + renderer.render(Finish("stop"))
    out += renderer.render(UsageReport(150, 40, 30, cache_write_tokens=20, reasoning_tokens=25)) + renderer.close()
    events = [orjson.loads(chunk.split(b"data: ", 1)[1]) for chunk in out]
    delta = next(event for event in events if event["type"] == "message_delta")
    assert delta["usage"] == ANTHROPIC_USAGE


def test_an_anthropic_stream_that_reports_cache_counts_up_front_announces_them_in_message_start():
    renderer = anthropic.stream_renderer(model="m", include_usage=True, prompt_estimate=7)
    out = renderer.render(UsageReport(150, None, 30, cache_write_tokens=20)) + renderer.render(Start("msg_1"))
    start = orjson.loads(out[0].split(b"data: ", 1)[1])
    assert start["message"]["usage"] == {**ANTHROPIC_USAGE, "output_tokens": 0}


def test_responses_usage_parses_and_renders_reasoning_and_cache_counts():
    raw = {
        "input_tokens": 150,
        "input_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 20},
        "output_tokens": 40,
        "output_tokens_details": {"reasoning_tokens": 25},
        "total_tokens": 190,
    }
    assert responses.response_usage({"usage": raw}) == USAGE
    reply = anthropic.parse_response(
        {
            "id": "msg_1",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": ANTHROPIC_USAGE,
        }
    )
    rendered = responses.render_response(reply, model="m")["usage"]
    assert rendered["input_tokens"] == 150 and rendered["input_tokens_details"] == raw["input_tokens_details"]
    assert "output_tokens_details" not in rendered  # Anthropic does not count it apart: not a count of 0
    reasoning = responses.render_response(ChatResponse(id="r", parts=[Text("hi")], usage=USAGE), model="m")
    assert reasoning["usage"] == raw


# The simulator, over loopback HTTP ------------------------------------------------------------------


def _openai(sim, model: str, *, stream: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "one two three four five six"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(f"{sim.openai_base}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    if not stream:
        return response.json()["usage"]
    datas = [line[6:] for line in response.text.split("\n") if line.startswith("data: {")]
    return orjson.loads(datas[-1])["usage"]


def _anthropic(sim, model: str, *, stream: bool) -> dict:
    body = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "one two three four five six"}]}
    response = httpx.post(f"{sim.url}/v1/messages", json=body | ({"stream": True} if stream else {}), timeout=10)
    assert response.status_code == 200
    if not stream:
        return response.json()["usage"]
    datas = [orjson.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
    start = next(data for data in datas if data["type"] == "message_start")["message"]["usage"]
    end = next(data for data in datas if data["type"] == "message_delta")["usage"]
    return {**start, **end}


def test_simulator_reports_cache_reads_writes_and_reasoning_on_demand(fresh_simulator):
    # The prompt is 6 words + 3 = 9 tokens: 2 read from the cache, 3 written; 4 answer + 3 reasoning tokens.
    model = "sim-echo?tokens=4&cached=2&cache_write=3&reasoning=3"
    for stream in (False, True):
        assert _openai(fresh_simulator, model, stream=stream) == {
            "prompt_tokens": 9,
            "completion_tokens": 7,
            "total_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 3},
        }, stream
        assert _anthropic(fresh_simulator, model, stream=stream) == {
            "input_tokens": 4,
            "cache_read_input_tokens": 2,
            "cache_creation_input_tokens": 3,
            "output_tokens": 7,
        }, stream
    # Never more cache than prompt: 9 - 2 = 7 tokens left to write.
    capped = _anthropic(fresh_simulator, "sim-echo?cached=2&cache_write=50", stream=False)
    assert (capped["input_tokens"], capped["cache_creation_input_tokens"]) == (0, 7)
