"""The reasoning part of a call's usage, end to end: a count the provider made is passed on; reasoning text it
streamed without counting (Anthropic never counts it apart) is counted by the gateway, in the client's usage and
in the usage record, inside the completion tokens and billed once; a count nobody made is left out, not shown as
0. Real gateway process -> simulator, over loopback."""

from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from streaming.tokens import count_tokens
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "Tell me something about streams"
# The simulator thinks " step1 step2 step3" (3 of its tokens) and answers 5 tokens: 8 completion tokens.
THINKING = " step1 step2 step3"
ESTIMATE = count_tokens(THINKING)
COMPLETION = 8
# Per million tokens.
INPUT_PRICE, OUTPUT_PRICE = Decimal("3"), Decimal("15")


@pytest.fixture
def key(fresh_simulator):
    chat = provider_create("sim-chat", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    prices = {"input_price_per_million": INPUT_PRICE, "output_price_per_million": OUTPUT_PRICE}
    model_create("claude-think", [(claude, "sim-claude?reasoning=3&tokens=5", 0)], **prices)
    model_create("claude-think-uncounted", [(claude, "sim-claude?reasoning=3&tokens=5&no_usage=1", 0)])
    model_create("claude", [(claude, "sim-claude?tokens=5", 0)])
    model_create("chat", [(chat, "sim-echo?tokens=5", 0)])
    model_create("chat-think", [(chat, "sim-echo?reasoning=3&tokens=5", 0)])
    return key_create("free")


def post(gateway, key: str, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01"}
    response = httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def sse_payloads(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line[6:] != "[DONE]"]


def chat_usage(gateway, key: str, model: str, stream: bool) -> tuple[str, dict]:
    """(request id, the usage an OpenAI chat client saw)."""
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "reasoning_effort": "low"}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = post(gateway, key, "/v1/chat/completions", body)
    if stream:
        payloads = sse_payloads(response.text)
        reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in payloads if c["choices"])
        usage = payloads[-1]["usage"]
    else:
        reasoning = response.json()["choices"][0]["message"].get("reasoning_content") or ""
        usage = response.json()["usage"]
    assert reasoning == (THINKING if "think" in model else "")
    return response.headers["x-request-id"], usage


def responses_usage(gateway, key: str, model: str, stream: bool) -> tuple[str, dict]:
    """(request id, the usage a Responses client saw)."""
    response = post(gateway, key, "/v1/responses", {"model": model, "input": QUESTION, "stream": stream})
    if stream:
        [final] = [e["response"] for e in sse_payloads(response.text) if e["type"] == "response.completed"]
    else:
        final = response.json()
    return response.headers["x-request-id"], final["usage"]


def anthropic_call(gateway, key: str, model: str, stream: bool) -> str:
    body = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": QUESTION}], "stream": stream}
    body["thinking"] = {"type": "enabled", "budget_tokens": 2000}
    return post(gateway, key, "/v1/messages", body).headers["x-request-id"]


def usage_event(request_id: str) -> dict:
    events = wait_usage(lambda events: any(e["request_id"] == request_id for e in events))
    return next(e for e in events if e["request_id"] == request_id)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_reasoning_an_anthropic_provider_does_not_count_is_counted_for_an_openai_client(gateway, key, stream):
    request_id, usage = chat_usage(gateway, key, "claude-think", stream)

    assert ESTIMATE not in (0, 3)  # the gateway's count, not the simulator's one token per word
    assert usage["completion_tokens"] == COMPLETION
    assert usage["completion_tokens_details"] == {"reasoning_tokens": ESTIMATE}
    assert "estimated" not in usage  # the provider's counts, only their reasoning part is the gateway's
    event = usage_event(request_id)
    assert (event["completion_tokens"], event["reasoning_tokens"], event["tokens_estimated"]) == (
        COMPLETION,
        ESTIMATE,
        False,
    )
    # Reasoning is a part of the completion, billed with it: not a second time.
    expected = (event["prompt_tokens"] * INPUT_PRICE + COMPLETION * OUTPUT_PRICE) / 1_000_000
    assert Decimal(event["cost"]) == expected


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_reasoning_an_anthropic_provider_does_not_count_is_counted_for_a_responses_client(gateway, key, stream):
    request_id, usage = responses_usage(gateway, key, "claude-think", stream)

    assert usage["output_tokens"] == COMPLETION
    assert usage["output_tokens_details"] == {"reasoning_tokens": ESTIMATE}
    assert usage_event(request_id)["reasoning_tokens"] == ESTIMATE


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", ["claude", "chat"])
def test_a_reasoning_count_nobody_made_is_left_out(gateway, key, model, stream):
    request_id, usage = responses_usage(gateway, key, model, stream)
    assert usage["output_tokens"] == 5 and "output_tokens_details" not in usage
    assert usage_event(request_id)["reasoning_tokens"] is None

    request_id, usage = chat_usage(gateway, key, "claude", stream)
    assert usage["completion_tokens"] == 5 and "completion_tokens_details" not in usage
    assert usage_event(request_id)["reasoning_tokens"] is None


def test_the_official_sdk_reads_a_responses_usage_without_a_reasoning_count(gateway, key):
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    response = client.responses.create(model="claude", input=QUESTION)
    assert response.usage.output_tokens == 5 and response.usage.output_tokens_details is None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_providers_own_count_is_kept(gateway, key, stream):
    request_id, usage = responses_usage(gateway, key, "chat-think", stream)
    assert usage["output_tokens_details"] == {"reasoning_tokens": 3}
    assert usage_event(request_id)["reasoning_tokens"] == 3

    request_id = anthropic_call(gateway, key, "chat-think", stream)
    assert usage_event(request_id)["reasoning_tokens"] == 3


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_record_counts_the_thinking_an_anthropic_client_was_passed(gateway, key, fresh_simulator, stream):
    request_id = anthropic_call(gateway, key, "claude-think", stream)

    event = usage_event(request_id)
    assert (event["completion_tokens"], event["reasoning_tokens"]) == (COMPLETION, ESTIMATE)
    expected = (event["prompt_tokens"] * INPUT_PRICE + COMPLETION * OUTPUT_PRICE) / 1_000_000
    assert Decimal(event["cost"]) == expected


def test_without_any_usage_from_the_provider_the_estimate_has_the_reasoning_part(gateway, key):
    request_id, usage = chat_usage(gateway, key, "claude-think-uncounted", stream=True)

    assert usage["estimated"] is True
    assert usage["completion_tokens_details"] == {"reasoning_tokens": ESTIMATE}
    assert usage["completion_tokens"] >= ESTIMATE
    event = usage_event(request_id)
    assert event["tokens_estimated"] is True and event["reasoning_tokens"] == ESTIMATE
