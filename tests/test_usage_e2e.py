"""Every request's usage reaches the database exactly once, even when the worker is killed."""

import asyncio
import time

import httpx
import pytest
from django.db.models import Sum

from accounts.models import UsageDaily, UsageRecord
from tests.support.data import key_create, model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_thousand_requests_thousand_records_despite_worker_kill(gateway, fresh_simulator, celery_worker):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sim-fast", [(sim, "sim-echo?tokens=7", 0)], input_price_per_million=1, output_price_per_million=2)
    key = key_create("bulk")
    worker = celery_worker(beat=True, flush_seconds=0.3)
    totals = {"prompt": 0, "completion": 0}

    async def run():
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            sem = asyncio.Semaphore(20)

            async def one(index):
                body = {
                    "model": "sim-fast",
                    "messages": [{"role": "user", "content": f"request {index} " * (index % 5 + 1)}],
                    "stream": index % 2 == 0,
                    "stream_options": {"include_usage": True} if index % 2 == 0 else None,
                }
                if body["stream_options"] is None:
                    del body["stream_options"]
                async with sem:
                    response = await client.post(
                        gateway.openai_base + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                    )
                assert response.status_code == 200, response.text
                if body["stream"]:
                    import orjson

                    chunks = [
                        orjson.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: {")
                    ]
                    usage = chunks[-1]["usage"]
                else:
                    usage = response.json()["usage"]
                totals["prompt"] += usage["prompt_tokens"]
                totals["completion"] += usage["completion_tokens"]

            await asyncio.gather(*(one(i) for i in range(400)))
            worker.kill()
            await asyncio.gather(*(one(i) for i in range(400, 1000)))

    asyncio.run(run())
    written_while_down = UsageRecord.objects.count()
    assert written_while_down < 1000
    worker.restart(wait=True)
    deadline = time.monotonic() + 60
    while UsageRecord.objects.count() < 1000:
        assert time.monotonic() < deadline, f"only {UsageRecord.objects.count()} records"
        time.sleep(0.2)
    time.sleep(1.0)
    assert UsageRecord.objects.count() == 1000
    sums = UsageRecord.objects.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    assert sums == {"p": totals["prompt"], "c": totals["completion"]}
    assert totals["completion"] == 7000
    daily = UsageDaily.objects.aggregate(r=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    assert daily == {"r": 1000, "p": totals["prompt"], "c": totals["completion"]}
    record = UsageRecord.objects.filter(stream=True).first()
    assert record.status_code == 200 and record.provider == "sim" and record.chunk_count > 7
    assert float(record.cost) == pytest.approx((record.prompt_tokens * 1 + record.completion_tokens * 2) / 1e6)
