"""The reasoning part of usage in the canonical model and the renderers: a count nobody made (None) is left out of
every client format, a count of 0 someone made is shown, and a stored answer keeps the difference."""

import orjson
import pytest

from providers.dialects.canonical import ChatResponse, Finish, Start, Text, TextDelta, Usage, UsageReport
from providers.dialects.openai import openai
from providers.dialects.replay import Answer, answer_decode, answer_encode
from providers.dialects.responses import responses


def _sse(chunks: list[bytes]) -> list[dict]:
    payloads = []
    for chunk in chunks:
        data = chunk.split(b"data: ", 1)[1].strip()
        if data != b"[DONE]":
            payloads.append(orjson.loads(data))
    return payloads


def _reply(reasoning: int | None) -> ChatResponse:
    return ChatResponse(
        id="x", parts=[Text("hi")], finish_reason="stop", usage=Usage(10, 4, reasoning_tokens=reasoning)
    )


def _streamed(dialect, reasoning: int | None) -> list[dict]:
    renderer = dialect.stream_renderer(model="m", include_usage=True)
    out = renderer.render(Start("x")) + renderer.render(TextDelta("hi")) + renderer.render(Finish("stop"))
    out += renderer.render(UsageReport(10, 4, reasoning_tokens=reasoning)) + renderer.close()
    return _sse(out)


def test_a_report_without_a_reasoning_count_has_none():
    assert UsageReport(10, 4).usage().reasoning_tokens is None
    report = UsageReport(10, None, reasoning_tokens=2)
    report.merge(UsageReport(None, 4))
    assert report.usage() == Usage(10, 4, reasoning_tokens=2)


@pytest.mark.parametrize(
    ("reasoning", "details"), [(None, None), (0, {"reasoning_tokens": 0}), (3, {"reasoning_tokens": 3})]
)
def test_an_openai_client_sees_a_reasoning_count_only_when_one_was_made(reasoning, details):
    whole = openai.render_response(_reply(reasoning), model="m")["usage"]
    streamed = _streamed(openai, reasoning)[-1]["usage"]
    for usage in (whole, streamed):
        assert usage["completion_tokens"] == 4
        assert usage.get("completion_tokens_details") == details


@pytest.mark.parametrize(
    ("reasoning", "details"), [(None, None), (0, {"reasoning_tokens": 0}), (3, {"reasoning_tokens": 3})]
)
def test_a_responses_client_sees_a_reasoning_count_only_when_one_was_made(reasoning, details):
    whole = responses.render_response(_reply(reasoning), model="m")["usage"]
    [completed] = [e for e in _streamed(responses, reasoning) if e["type"] == "response.completed"]
    for usage in (whole, completed["response"]["usage"]):
        assert usage["output_tokens"] == 4
        assert usage.get("output_tokens_details") == details


@pytest.mark.parametrize("reasoning", [None, 0, 7])
def test_a_stored_answer_keeps_its_reasoning_count_or_its_absence(reasoning):
    answer = Answer([TextDelta("hi"), Finish("stop")], Usage(10, 9, 2, 1, reasoning))
    assert answer_decode(answer_encode(answer)).usage == Usage(10, 9, 2, 1, reasoning)
    assert answer.stream_events()[0].reasoning_tokens == reasoning
