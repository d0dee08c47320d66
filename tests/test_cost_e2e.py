"""What a call costs, end to end: a gateway process, the simulator, real Redis and a real Celery worker
flushing the usage records. Every figure is worked out by hand from the simulator's token counts (the prompt
"one two three four five six" is 6 words + 3 = 9 tokens) and the prices per million, and compared as a
Decimal with UsageRecord.cost."""

from decimal import Decimal

import httpx
import orjson
import pytest
from django.db.models import Sum

from accounts.keys import key_hash
from accounts.models import ApiKey, Team, UsageDaily, UsageRecord
from accounts.usage import USAGE_QUEUE_KEY
from aigateway.redis import redis_sync
from providers.models import Deployment, Model
from tests.support.compare import compare_stream
from tests.support.data import key_create, model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "one two three four five six"}]
PROMPT_TOKENS = 9
# Per million tokens: input, output, cache read, cache write.
GPT_PRICES = {
    "input_price_per_million": Decimal("2.5"),
    "output_price_per_million": Decimal("10"),
    "cached_input_price_per_million": Decimal("0.25"),
    "cache_write_price_per_million": Decimal("3.125"),
}
CLAUDE_PRICES = {
    "input_price_per_million": Decimal("3"),
    "output_price_per_million": Decimal("15"),
    "cached_input_price_per_million": Decimal("0.3"),
    "cache_write_price_per_million": Decimal("3.75"),
}


@pytest.fixture
def providers(fresh_simulator):
    return (
        provider_create("openai-sim", fresh_simulator.openai_base),
        provider_create("anthropic-sim", fresh_simulator.anthropic_base, dialect="anthropic"),
    )


@pytest.fixture
def key():
    """A key on a team: its records keep the key's owner and team."""
    plaintext = key_create("costs")
    api_key = ApiKey.objects.get(key_hash=key_hash(plaintext))
    api_key.team = Team.objects.create(name="payers")
    api_key.save()
    return plaintext


def _headers(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01"}


def _sse_datas(text: str) -> list[dict]:
    return [orjson.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]


def openai_call(gateway, key: str, model: str, *, stream: bool = False) -> tuple[str, dict]:
    """(request id, the usage the client saw) of one chat completion."""
    body = {"model": model, "messages": MESSAGES}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(gateway.openai_base + "/chat/completions", json=body, headers=_headers(key), timeout=30)
    assert response.status_code == 200, response.text
    usage = _sse_datas(response.text)[-1]["usage"] if stream else response.json()["usage"]
    return response.headers["x-request-id"], usage


def anthropic_call(gateway, key: str, model: str, *, stream: bool = False) -> tuple[str, dict]:
    """(request id, the usage the client saw: message_start's and message_delta's merged) of one message."""
    body = {"model": model, "max_tokens": 100, "messages": MESSAGES, "stream": stream}
    response = httpx.post(gateway.url + "/v1/messages", json=body, headers=_headers(key), timeout=30)
    assert response.status_code == 200, response.text
    if not stream:
        return response.headers["x-request-id"], response.json()["usage"]
    datas = _sse_datas(response.text)
    start = next(data for data in datas if data["type"] == "message_start")["message"]["usage"]
    end = next(data for data in datas if data["type"] == "message_delta")["usage"]
    return response.headers["x-request-id"], {**start, **end}


def records(*request_ids: str, timeout: float = 30) -> list[UsageRecord]:
    """The flushed records of these requests, in the same order (the worker writes them)."""
    eventually(
        lambda: UsageRecord.objects.filter(request_id__in=request_ids).count() == len(request_ids),
        timeout=timeout,
        what=f"records of {request_ids}",
    )
    found = {record.request_id: record for record in UsageRecord.objects.filter(request_id__in=request_ids)}
    return [found[request_id] for request_id in request_ids]


def assert_books_balance(key: str) -> None:
    """The daily rollups add up to the records, to the last decimal."""
    api_key = ApiKey.objects.get(key_hash=key_hash(key))
    records_cost = UsageRecord.objects.filter(api_key=api_key).aggregate(cost=Sum("cost"))["cost"]
    daily_cost = UsageDaily.objects.filter(api_key=api_key).aggregate(cost=Sum("cost"))["cost"]
    assert daily_cost == records_cost


def test_plain_and_streamed_calls_cost_their_tokens_at_the_model_prices(gateway, providers, key, celery_worker):
    gpt, _ = providers
    model_create("gpt-plain", [(gpt, "sim-echo?tokens=7", 0)], **GPT_PRICES)
    celery_worker(flush_seconds=0.3)
    plain_id, plain_usage = openai_call(gateway, key, "gpt-plain")
    streamed_id, streamed_usage = openai_call(gateway, key, "gpt-plain", stream=True)
    assert plain_usage["prompt_tokens"] == streamed_usage["prompt_tokens"] == PROMPT_TOKENS
    plain, streamed = records(plain_id, streamed_id)
    # 9 * 2.5 + 7 * 10 = 92.5 per million
    assert plain.cost == streamed.cost == Decimal("0.0000925")
    assert (plain.stream, streamed.stream) == (False, True)
    api_key = ApiKey.objects.get(key_hash=key_hash(key))
    assert (plain.user_id, plain.team_id) == (api_key.owner_id, api_key.team_id)
    assert plain.team_id is not None
    assert_books_balance(key)


def test_cache_reads_cache_writes_and_reasoning_are_each_priced_apart(gateway, providers, key, celery_worker):
    gpt, claude = providers
    model_create("gpt-cached", [(gpt, "sim-echo?tokens=7&cached=4", 0)], **GPT_PRICES)
    model_create("claude-cache-write", [(claude, "sim-claude?tokens=7&cached=2&cache_write=3", 0)], **CLAUDE_PRICES)
    model_create("gpt-reasoning", [(gpt, "sim-echo?tokens=4&reasoning=3", 0)], **GPT_PRICES)
    celery_worker(flush_seconds=0.3)
    cached_id, _ = openai_call(gateway, key, "gpt-cached", stream=True)
    write_id, write_usage = anthropic_call(gateway, key, "claude-cache-write")
    assert write_usage == {
        "input_tokens": 4,
        "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": 3,
        "output_tokens": 7,
    }
    write_stream_id, _ = anthropic_call(gateway, key, "claude-cache-write", stream=True)
    reasoning_id, reasoning_usage = openai_call(gateway, key, "gpt-reasoning")
    assert reasoning_usage["completion_tokens_details"] == {"reasoning_tokens": 3}

    cached, written, written_streamed, reasoning = records(cached_id, write_id, write_stream_id, reasoning_id)
    assert (cached.prompt_tokens, cached.cached_tokens, cached.cache_write_tokens) == (9, 4, 0)
    # 5 * 2.5 + 4 * 0.25 + 7 * 10 = 12.5 + 1 + 70 = 83.5 per million
    assert cached.cost == Decimal("0.0000835")
    for record in (written, written_streamed):
        assert (record.prompt_tokens, record.cached_tokens, record.cache_write_tokens) == (9, 2, 3)
        # 4 * 3 + 2 * 0.3 + 3 * 3.75 + 7 * 15 = 12 + 0.6 + 11.25 + 105 = 128.85 per million
        assert record.cost == Decimal("0.00012885")
    assert (reasoning.completion_tokens, reasoning.reasoning_tokens) == (7, 3)
    # Reasoning tokens are output tokens: 9 * 2.5 + 7 * 10 = 92.5 per million
    assert reasoning.cost == Decimal("0.0000925")
    assert_books_balance(key)


def test_translated_calls_are_priced_at_the_serving_deployment_both_ways(gateway, providers, key, celery_worker):
    gpt, claude = providers
    model_create("claude-for-openai", [(claude, "sim-claude?tokens=5&cached=3&cache_write=2", 0)], **CLAUDE_PRICES)
    model_create("gpt-for-anthropic", [(gpt, "sim-echo?tokens=5&cached=3&reasoning=2", 0)], **GPT_PRICES)
    celery_worker(flush_seconds=0.3)

    # An OpenAI client of an Anthropic provider sees the cache counts in OpenAI's terms.
    ids = []
    for stream in (False, True):
        request_id, usage = openai_call(gateway, key, "claude-for-openai", stream=stream)
        assert usage["prompt_tokens"] == 9 and usage["completion_tokens"] == 5
        assert usage["prompt_tokens_details"] == {"cached_tokens": 3, "cache_write_tokens": 2}
        ids.append(request_id)
    # An Anthropic client of an OpenAI provider sees them in Anthropic's: input_tokens leaves the cache out.
    for stream in (False, True):
        request_id, usage = anthropic_call(gateway, key, "gpt-for-anthropic", stream=stream)
        assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (6, 3, 7)
        ids.append(request_id)

    found = records(*ids)
    for record in found[:2]:
        # 4 * 3 + 3 * 0.3 + 2 * 3.75 + 5 * 15 = 12 + 0.9 + 7.5 + 75 = 95.4 per million
        assert record.cost == Decimal("0.0000954"), record.stream
        assert (record.cached_tokens, record.cache_write_tokens) == (3, 2)
    for record in found[2:]:
        # 6 * 2.5 + 3 * 0.25 + 7 * 10 = 15 + 0.75 + 70 = 85.75 per million
        assert record.cost == Decimal("0.00008575"), record.stream
        assert (record.cached_tokens, record.reasoning_tokens) == (3, 2)
    assert_books_balance(key)


def test_compare_records_each_model_at_its_own_prices(gateway, providers, key, celery_worker):
    gpt, claude = providers
    model_create("cmp-cheap", [(gpt, "sim-echo?tokens=6", 0)], input_price_per_million=1, output_price_per_million=2)
    model_create("cmp-dear", [(claude, "sim-claude?tokens=4", 0)], **CLAUDE_PRICES)
    celery_worker(flush_seconds=0.3)
    got = compare_stream(gateway.url, key, {"models": ["cmp-cheap", "cmp-dear"], "messages": MESSAGES})
    assert got.status == 200, got.body
    run_id = got.headers["x-gateway-run-id"]
    eventually(lambda: UsageRecord.objects.filter(run_id=run_id).count() == 2, timeout=30, what="both records")
    by_model = {record.model: record for record in UsageRecord.objects.filter(run_id=run_id)}
    # 9 * 1 + 6 * 2 = 21 per million; 9 * 3 + 4 * 15 = 87 per million
    assert by_model["cmp-cheap"].cost == Decimal("0.000021")
    assert by_model["cmp-dear"].cost == Decimal("0.000087")
    # The done event shows the same figure.
    assert Decimal(str(got.of("cmp-dear", "done")[0]["cost"])) == Decimal("0.000087")
    assert_books_balance(key)


def test_a_client_gone_mid_stream_pays_for_what_was_served(gateway, providers, key, celery_worker, fresh_simulator):
    _, claude = providers
    upstream = "sim-claude?tokens=200&interval_ms=20&cached=4"
    model_create("claude-long", [(claude, upstream, 0)], **CLAUDE_PRICES)
    celery_worker(flush_seconds=0.3)
    body = {"model": "claude-long", "messages": MESSAGES, "stream": True}
    seen = 0
    with httpx.stream(
        "POST", gateway.openai_base + "/chat/completions", json=body, headers=_headers(key), timeout=30
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {") and orjson.loads(line[6:])["choices"][0]["delta"].get("content"):
                seen += 1
                if seen == 10:
                    break
    fresh_simulator.wait_for_requests(lambda rs: rs and rs[-1]["disconnected"], timeout=5, model=upstream)
    [record] = records(request_id)
    assert (record.status_code, record.error_type, record.tokens_estimated) == (499, "client_disconnected", True)
    # The prompt as the provider reported it in message_start (4 of 9 read from the cache), the completion
    # as far as it went: far fewer than the 200 tokens asked for.
    assert (record.prompt_tokens, record.cached_tokens) == (9, 4)
    assert 10 <= record.completion_tokens < 100
    # 5 * 3 + 4 * 0.3 + completion * 15 per million
    expected = (Decimal("16.2") + record.completion_tokens * 15) / 1_000_000
    assert record.cost == expected.quantize(Decimal("0.00000001"))
    assert_books_balance(key)


def test_a_deployment_price_override_wins_for_the_deployment_that_served(gateway, providers, key, celery_worker):
    gpt, _ = providers
    model = model_create("gpt-override", [], **GPT_PRICES)
    # The first choice fails before its first byte (and would be dear); the second serves at its own prices.
    Deployment.objects.create(
        model=model, provider=gpt, upstream_model="sim-echo?fail=500", priority=0,
        input_price_per_million=Decimal(100), output_price_per_million=Decimal(100),
    )  # fmt: skip
    serving = Deployment.objects.create(
        model=model, provider=gpt, upstream_model="sim-echo?tokens=7&cached=4", priority=1,
        input_price_per_million=Decimal(2), output_price_per_million=Decimal(8),
    )  # fmt: skip
    celery_worker(flush_seconds=0.3)
    request_id, _ = openai_call(gateway, key, "gpt-override")
    [record] = records(request_id)
    assert record.deployment_id == serving.pk and record.attempts == 2
    # Input and output overridden, the cache price the model's: 5 * 2 + 4 * 0.25 + 7 * 8 = 67 per million
    assert record.cost == Decimal("0.000067")
    assert_books_balance(key)


def test_a_price_change_after_the_call_does_not_rewrite_its_cost(gateway, providers, key, celery_worker):
    gpt, _ = providers
    model_create("gpt-drift", [(gpt, "sim-echo?tokens=7", 0)], **GPT_PRICES)
    before_id, _ = openai_call(gateway, key, "gpt-drift")
    eventually(lambda: redis_sync().llen(USAGE_QUEUE_KEY) >= 1, timeout=5, what="the call's event queued")
    # The prices double while the call's event still waits in the queue (no worker yet); saving the model
    # makes every gateway reload its routes.
    model = Model.objects.get(name="gpt-drift")
    model.input_price_per_million, model.output_price_per_million = Decimal(5), Decimal(20)
    model.save()
    response = httpx.get(gateway.url + "/api/v1/usage", headers=_headers(key), timeout=30)
    assert response.status_code == 200, response.text
    # The report prices the queued call as it ran: 9 * 2.5 + 7 * 10 = 92.5 per million.
    assert Decimal(str(response.json()["totals"]["cost"])) == Decimal("0.0000925")

    after_id, _ = openai_call(gateway, key, "gpt-drift")
    celery_worker(flush_seconds=0.3)
    before, after = records(before_id, after_id)
    assert before.cost == Decimal("0.0000925")
    # A call after the change pays the new prices: 9 * 5 + 7 * 20 = 185 per million.
    assert after.cost == Decimal("0.000185")
    assert_books_balance(key)
