"""/v1/messages/count_tokens counts against the key's requests per minute, the bucket its chat calls use,
but reserves no tokens and takes no concurrency slot. A real gateway process, real Redis, the simulator
over loopback."""

import anthropic
import httpx
import pytest

from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import usage_events

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "How many tokens is this?"}]
COUNT_PATH = "/v1/messages/count_tokens"


@pytest.fixture
def models(fresh_simulator):
    claude = provider_create("anthropic-sim", fresh_simulator.url, dialect="anthropic")
    model_create("claude", [(claude, "sim-claude", 0)])


def count(gateway, key: str, model: str = "claude") -> httpx.Response:
    return httpx.post(gateway.url + COUNT_PATH, json={"model": model, "messages": MESSAGES},
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=10)  # fmt: skip


def chat(gateway, key: str) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/messages", json={"model": "claude", "max_tokens": 20, "messages": MESSAGES},
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, timeout=10)  # fmt: skip


def _leases() -> int:
    client = redis_sync()
    return sum(client.zcard(key) for key in client.scan_iter("gw:rl:*:leases"))


def test_the_sixth_count_within_a_minute_is_refused_on_a_key_allowed_five(gateway, models, fresh_simulator):
    key = key_create("rpm5", rpm=5)
    answers = [count(gateway, key) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 5 + [429]
    assert all(answer.json()["input_tokens"] > 0 for answer in answers[:5])
    assert [int(a.headers["anthropic-ratelimit-requests-remaining"]) for a in answers[:5]] == [4, 3, 2, 1, 0]
    assert answers[0].headers["anthropic-ratelimit-requests-limit"] == "5"
    refused = answers[5]
    body = refused.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "rate_limit_error"
    assert "requests per minute (limit 5)" in body["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 13
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert refused.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert refused.headers["x-request-id"]
    # The refused call never reached the provider; counting left no lease and no usage event.
    assert len(fresh_simulator.requests(path=COUNT_PATH)) == 5
    assert _leases() == 0 and usage_events() == []
    # The official SDK reads it as a rate limit.
    with pytest.raises(anthropic.RateLimitError):
        anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0).messages.count_tokens(
            model="claude", messages=MESSAGES
        )


def test_counting_uses_up_the_requests_the_chat_calls_share(gateway, models):
    key = key_create("rpm5", rpm=5)
    assert [count(gateway, key).status_code for _ in range(3)] == [200] * 3
    assert [chat(gateway, key).status_code for _ in range(3)] == [200, 200, 429]
    assert count(gateway, key).status_code == 429
    other = key_create("rpm5-other", rpm=5)
    assert count(gateway, other).status_code == 200  # one key's bucket, not the tier's


def test_counting_takes_no_tokens_and_no_concurrency_slot(gateway, models, fresh_simulator):
    """A key whose only limits are tokens and concurrency: counting is not limited at all, reserves no
    tokens (a 50-token-per-minute key counts twenty times) and holds no slot."""
    key = key_create("tokens-and-slots", tpm=50, max_concurrent=1, daily_tokens=50)
    assert [count(gateway, key).status_code for _ in range(20)] == [200] * 20
    client = redis_sync()
    assert _leases() == 0
    assert not list(client.scan_iter("gw:rl:*:tok")) and not list(client.scan_iter("gw:rl:*:day:*"))
    assert chat(gateway, key).status_code == 200  # its tokens and its slot are all there


def test_keys_without_limits_count_freely(gateway, models, fresh_simulator):
    key = key_create("free")
    assert [count(gateway, key).status_code for _ in range(30)] == [200] * 30
    assert "anthropic-ratelimit-requests-limit" not in count(gateway, key).headers
    assert not list(redis_sync().scan_iter("gw:rl:*"))
    assert len(fresh_simulator.requests(path=COUNT_PATH)) == 31
