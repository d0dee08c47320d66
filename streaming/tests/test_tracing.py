"""The pure parts of the request traces (names and attributes after the GenAI conventions), and that with
tracing off the relay's hooks make no span and change nothing."""

from types import SimpleNamespace

import pytest

from aigateway import tracing as sdk
from streaming.tracing import (
    call_attributes,
    genai_operation,
    genai_provider_name,
    request_params,
    request_span_name,
    request_trace_answered,
    request_trace_start,
    server_address,
    trace_attempt_answered,
    trace_attempt_start,
    trace_call_finish,
    trace_call_start,
)


@pytest.mark.parametrize(
    ("base_url", "known"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("https://api.anthropic.com", "anthropic"),
        ("https://api.deepseek.com/v1", "deepseek"),
        ("https://api.mistral.ai/v1", "mistral_ai"),
        ("https://api.groq.com/openai/v1", "groq"),
        ("https://api.x.ai/v1", "x_ai"),
        ("https://generativelanguage.googleapis.com/v1beta/openai", "gcp.gemini"),
        ("https://us-central1-aiplatform.googleapis.com/v1/projects/p", "gcp.vertex_ai"),
        ("https://my-resource.openai.azure.com/openai/deployments/d", "azure.ai.openai"),
        ("https://bedrock-runtime.eu-west-1.amazonaws.com", "aws.bedrock"),
        # Anything else is known by the provider's name in the gateway.
        ("http://127.0.0.1:8000/v1", "local-vllm"),
        ("https://openrouter.ai/api/v1", "local-vllm"),
        ("https://api.openai.com.evil.example/v1", "local-vllm"),
        ("https://s3.eu-west-1.amazonaws.com", "local-vllm"),
    ],
)
def test_provider_names_follow_the_conventions_well_known_values(base_url, known):
    assert genai_provider_name(base_url, "local-vllm") == known


def test_server_address_and_port_with_the_schemes_default():
    assert server_address("https://api.openai.com/v1") == ("api.openai.com", 443)
    assert server_address("http://127.0.0.1:8123/v1") == ("127.0.0.1", 8123)
    assert server_address("http://ollama/v1") == ("ollama", 80)


def test_operations_by_door():
    assert [genai_operation(e) for e in ("chat.completions", "responses", "messages")] == ["chat"] * 3
    assert genai_operation("embeddings") == "embeddings"
    assert genai_operation("completions") == "text_completion"
    assert genai_operation("compare") is None and genai_operation(None) is None


def test_span_names_of_other_views_never_hold_a_value_from_the_path():
    assert request_span_name("GET", "/v1/models", "models") == ("GET /v1/models", "/v1/models")
    assert request_span_name("GET", "/v1/models/gpt-4o", "model_detail") == (
        "GET /v1/models/{model}",
        "/v1/models/{model}",
    )
    assert request_span_name("POST", "/v1/anything/at/all", "not_found") == ("POST", "")


def test_request_parameters_are_numbers_only():
    body = {
        "max_completion_tokens": 64,
        "max_tokens": 99,
        "temperature": 0.2,
        "top_p": True,
        "messages": [{"role": "user", "content": "secret prompt"}],
    }
    assert request_params(body) == {"gen_ai.request.max_tokens": 64, "gen_ai.request.temperature": 0.2}
    assert request_params({"max_output_tokens": 7, "temperature": "hot"}) == {"gen_ai.request.max_tokens": 7}


def _call(**fields) -> SimpleNamespace:
    provider = SimpleNamespace(name="openai-prod", base_url="https://api.openai.com/v1")
    defaults = {
        "model": "gpt-4o",
        "route_label": "alias",
        "attempts": 2,
        "route": SimpleNamespace(provider=provider, deployment_id=7),
        "finish_reason": "stop",
        "cache_result": "miss",
    }
    return SimpleNamespace(**{**defaults, **fields})


EVENT = {
    "prompt_tokens": 12,
    "completion_tokens": 30,
    "cached_tokens": 4,
    "cache_write_tokens": 0,
    "reasoning_tokens": 9,
    "status_code": 200,
    "tokens_estimated": False,
    "ttfb_ms": 41.5,
    "ttfb_upstream_ms": 38.0,
    "cost": "0.000312",
}


def test_a_finished_calls_attributes_are_its_usage_events_figures():
    assert call_attributes(_call(), EVENT) == {
        "gen_ai.response.model": "gpt-4o",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 4,
        "gen_ai.usage.reasoning.output_tokens": 9,
        "gen_ai.response.finish_reasons": ("stop",),
        "gateway.provider": "openai-prod",
        "gateway.route": "alias",
        "gateway.attempts": 2,
        "gateway.ttfb_ms": 41.5,
        "gateway.ttfb_upstream_ms": 38.0,
        "gateway.cost": "0.000312",
        "gateway.cache": "miss",
    }


def test_a_call_no_provider_served_names_none():
    event = {**EVENT, "ttfb_ms": None, "ttfb_upstream_ms": None, "cost": None, "cached_tokens": 0}
    event.update(status_code=503, tokens_estimated=True)
    attributes = call_attributes(_call(route=None, finish_reason=None, cache_result=""), event)
    assert attributes["gateway.status_code"] == 503 and attributes["gateway.tokens_estimated"] is True
    assert not {"gen_ai.provider.name", "gateway.provider", "gen_ai.response.finish_reasons"} & set(attributes)
    assert not {"gateway.ttfb_ms", "gateway.cost", "gateway.cache", "gen_ai.usage.cache_read.input_tokens"} & set(
        attributes
    )


async def test_with_tracing_off_the_hooks_make_no_span_and_change_nothing():
    assert sdk.tracer is None
    request = SimpleNamespace(
        path="/v1/chat/completions", headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    )
    assert request_trace_start(request, view="chat_completions") is None
    request_trace_answered(None, request, SimpleNamespace(status_code=200), endpoint="chat.completions")
    call = SimpleNamespace(trace=None, request_id="req_1")
    trace_call_start(call)
    assert call.trace is None
    headers = {"authorization": "Bearer x"}
    assert trace_attempt_start(call, SimpleNamespace(), headers) is headers
    assert headers == {"authorization": "Bearer x"}
    trace_attempt_answered(call, 200)
    trace_call_finish(call, EVENT)
