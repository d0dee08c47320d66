"""Tier limits hold exactly through real gateway processes sharing one Redis."""

import asyncio
import time
from datetime import UTC, datetime

import httpx
import openai
import pytest

from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "limits"}]


@pytest.fixture
def models(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo", 0)])
    model_create("sim-hold", [(sim, "sim-echo?tokens=400&interval_ms=25", 0)])


async def fire(urls: list[str], key: str, total: int) -> list[httpx.Response]:
    body = {"model": "sim-fast", "messages": MESSAGES}
    limits = httpx.Limits(max_connections=total, max_keepalive_connections=total)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    urls[i % len(urls)] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                for i in range(total)
            )
        )


def test_rpm_exact_under_100_concurrent_requests(gateway, models):
    key = key_create("rpm10", rpm=10)
    responses = asyncio.run(fire([gateway.url], key, 100))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "10"
    assert int(ok.headers["x-ratelimit-remaining-requests"]) in range(0, 10)
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"]
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0).chat.completions.create(
            model="sim-fast", messages=MESSAGES
        )


def test_rpm_exact_across_two_gateway_processes(gateway_factory, models):
    first, second = gateway_factory(), gateway_factory()
    key = key_create("rpm10", rpm=10)
    responses = asyncio.run(fire([first.url, second.url], key, 100))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    # Both processes served part of the traffic.
    served = {r.url.port for r in responses}
    assert len(served) == 2


def test_concurrency_limit_admits_again_after_finish_or_disconnect(gateway, models):
    key = key_create("conc3", max_concurrent=3)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "sim-hold", "messages": MESSAGES, "stream": True}
    url = gateway.openai_base + "/chat/completions"
    with httpx.Client(timeout=30) as client:
        streams = []
        for _ in range(3):
            response = client.send(client.build_request("POST", url, json=body, headers=headers), stream=True)
            assert response.status_code == 200
            # Keep the iterator: dropping a half-read one closes the connection.
            chunks = response.iter_raw()
            next(chunks)
            streams.append((response, chunks))
        fourth = client.post(url, json=body, headers=headers)
        assert fourth.status_code == 429
        assert "concurrent" in fourth.json()["error"]["message"]
        # The client of one stream goes away: its lease is freed.
        streams.pop()[0].close()
        deadline = time.monotonic() + 3
        while True:
            retry = client.send(client.build_request("POST", url, json=body, headers=headers), stream=True)
            if retry.status_code == 200:
                break
            retry.close()
            assert time.monotonic() < deadline, "lease not released after disconnect"
            time.sleep(0.1)
        chunks = retry.iter_raw()
        next(chunks)
        streams.append((retry, chunks))
        assert client.post(url, json=body, headers=headers).status_code == 429
        # A stream that runs to its end frees its lease too.
        for response, _ in streams:
            response.close()
        quick = {"model": "sim-fast", "messages": MESSAGES, "stream": True}
        time.sleep(0.3)
        for _ in range(5):
            response = client.post(url, json=quick, headers=headers)
            assert response.status_code == 200
            assert response.text.rstrip().endswith("data: [DONE]")


def test_non_streamed_requests_release_their_lease(gateway, models):
    key = key_create("conc1", max_concurrent=1)
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    for _ in range(5):
        assert client.chat.completions.create(model="sim-fast", messages=MESSAGES).choices


def test_daily_token_quota(gateway, models):
    key = key_create("daily", daily_tokens=60)
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    spent = 0
    with pytest.raises(openai.RateLimitError, match="Daily token quota") as refused:
        for _ in range(20):
            spent += client.chat.completions.create(
                model="sim-fast", messages=MESSAGES, max_tokens=5
            ).usage.total_tokens
    # The quota counts real usage (the estimate made at admission was corrected afterwards).
    assert f"used {spent}" in str(refused.value)
    assert 0 < spent <= 60


def test_anthropic_clients_get_anthropic_limit_headers(gateway, models):
    key = key_create("rpm2-tpm", rpm=2, tpm=100_000)
    body = {"model": "sim-fast", "max_tokens": 20, "messages": MESSAGES}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    first = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert first.headers["anthropic-ratelimit-tokens-limit"] == "100000"
    reset = datetime.fromisoformat(first.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
    assert 0 <= (reset - datetime.now(UTC)).total_seconds() <= 61
    assert "x-ratelimit-limit-requests" not in first.headers
    httpx.post(gateway.url + "/v1/messages", json=body, headers=headers, timeout=30)
    refused = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers, timeout=30)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
