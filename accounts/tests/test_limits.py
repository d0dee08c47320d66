"""Rate limits and quotas against the real test Redis: exactness under concurrency (one process and two),
token reservation and correction, leases, daily quota, headers."""

import asyncio
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from accounts.context import KeyContext
from accounts.limits import (
    format_reset,
    limits_admit,
    limits_lease_refresh,
    limits_remaining,
    limits_settle,
)
from accounts.usage import USAGE_INFLIGHT_DEADLINES_KEY, USAGE_INFLIGHT_KEY
from aigateway.redis import redis_sync

PROJECT_DIR = Path(__file__).resolve().parents[2]


def key_context(key_id: int = 1, **limits) -> KeyContext:
    values = {"rpm": None, "tpm": None, "max_concurrent": None, "daily_tokens": None, "max_output_tokens": None}
    values.update(limits)
    return KeyContext(
        key_id=key_id,
        key_prefix="sk-gw-test",
        key_name="test",
        owner_id=1,
        is_staff=False,
        tier_name="test",
        max_compare_models=4,
        **values,
    )


async def admit(ctx: KeyContext, estimate: int = 0, request_id: str = "req"):
    return await limits_admit(ctx, estimate_tokens=estimate, request_id=request_id)


async def test_rpm_allows_exactly_the_limit_under_concurrency():
    ctx = key_context(rpm=10)
    results = await asyncio.gather(*(admit(ctx, request_id=f"r{i}") for i in range(100)))

    allowed = [r for r in results if r.allowed]
    refused = [r for r in results if not r.allowed]
    assert len(allowed) == 10
    assert {r.code for r in refused} == {"requests"}
    # One request comes back every 60/10 = 6 seconds.
    assert all(5.0 < r.retry_after <= 6.0 for r in refused)
    assert {r.headers["retry-after"] for r in refused} == {"6"}
    assert refused[0].message == "Rate limit reached for requests per minute (limit 10). Retry after 6s."
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in allowed) == list(range(10))


ADMIT_IN_CHILD = """
import asyncio, os, sys
from accounts.context import KeyContext
from accounts.limits import limits_admit
from aigateway.redis import redis_async

async def main():
    ctx = KeyContext(key_id=int(sys.argv[1]), key_prefix="p", key_name="n", owner_id=1, is_staff=False,
                     tier_name="t", rpm=10, tpm=None, max_concurrent=None, daily_tokens=None,
                     max_output_tokens=None, max_compare_models=4)
    client = redis_async()
    barrier = sys.argv[2]
    await client.incr(barrier)
    for _ in range(5000):
        if int(await client.get(barrier)) >= 2:
            break
        await asyncio.sleep(0.002)
    results = await asyncio.gather(
        *(limits_admit(ctx, estimate_tokens=0, request_id=f"{os.getpid()}-{i}") for i in range(50))
    )
    print(sum(r.allowed for r in results))

asyncio.run(main())
"""


def test_rpm_exact_across_two_processes(redis_server):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "aigateway.settings", "REDIS_URL": redis_server}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", ADMIT_IN_CHILD, "77", "test:barrier"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    counts = [int(out.strip()) for out, _ in outputs]
    assert sum(counts) == 10, counts


async def test_tokens_reserve_the_estimate_and_settle_corrects_it():
    ctx = key_context(key_id=2, tpm=1000)
    first = await admit(ctx, estimate=600, request_id="a")
    assert first.allowed and first.reserved_tokens == 600
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"

    second = await admit(ctx, estimate=600, request_id="b")
    assert not second.allowed and second.code == "tokens"
    # 200 tokens are missing; 1000 tokens refill per minute -> 12 s.
    assert 11.5 < second.retry_after <= 12.0
    assert "tokens per minute (limit 1000" in second.message

    # The answer used 100 tokens: 500 reserved tokens come back.
    await limits_settle(ctx, first, actual_tokens=100)
    assert (await limits_remaining(ctx))["tokens"]["remaining"] == 900
    third = await admit(ctx, estimate=600, request_id="c")
    assert third.allowed

    # The answer used more than estimated: the overrun is charged, the bucket goes into debt.
    await limits_settle(ctx, third, actual_tokens=1500)
    remaining = await limits_remaining(ctx)
    assert remaining["tokens"]["remaining"] == 0
    assert 95 < remaining["tokens"]["reset_seconds"] <= 96  # 1600 tokens owed at 1000/min
    refused = await admit(ctx, estimate=1, request_id="d")
    assert not refused.allowed and refused.code == "tokens"


async def test_request_larger_than_the_token_limit_is_refused_without_retry():
    ctx = key_context(key_id=3, tpm=1000)
    refused = await admit(ctx, estimate=1001)
    assert not refused.allowed and refused.code == "tokens"
    assert refused.retry_after is None and "retry-after" not in refused.headers
    assert "Request too large" in refused.message
    assert (await admit(ctx, estimate=1000)).allowed


async def test_concurrency_leases_acquire_and_release():
    ctx = key_context(key_id=4, max_concurrent=2)
    first, second = await admit(ctx, request_id="a"), await admit(ctx, request_id="b")
    assert first.allowed and second.allowed and first.lease_id != second.lease_id
    third = await admit(ctx, request_id="c")
    assert not third.allowed and third.code == "concurrency"
    assert third.message.startswith("Too many concurrent requests (limit 2).")
    assert third.retry_after == 1.0 and third.headers["retry-after"] == "1"
    assert (await limits_remaining(ctx))["concurrent"] == {"limit": 2, "in_flight": 2}

    await limits_settle(ctx, first, actual_tokens=None)
    assert (await admit(ctx, request_id="d")).allowed
    assert not (await admit(ctx, request_id="e")).allowed


async def test_lease_of_a_dead_process_expires_unless_refreshed(settings):
    settings.GATEWAY_LEASE_TTL_SECONDS = 0.4
    ctx = key_context(key_id=5, max_concurrent=1)
    streaming = await admit(ctx, request_id="long-stream")
    assert streaming.allowed
    for _ in range(3):
        await asyncio.sleep(0.2)
        await limits_lease_refresh(ctx, streaming)
        assert not (await admit(ctx, request_id="blocked")).allowed

    # The holder stops refreshing (its process died): the slot frees itself after the TTL.
    await asyncio.sleep(0.5)
    assert (await admit(ctx, request_id="after-expiry")).allowed


async def test_daily_token_quota():
    ctx = key_context(key_id=6, daily_tokens=1000)
    first = await admit(ctx, estimate=400)
    assert first.allowed and first.headers == {}
    await limits_settle(ctx, first, actual_tokens=500)
    assert (await admit(ctx, estimate=400)).allowed

    refused = await admit(ctx, estimate=200)
    assert not refused.allowed and refused.code == "daily_tokens"
    now = datetime.now(UTC)
    to_midnight = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
    assert abs(refused.retry_after - to_midnight) < 2
    assert refused.headers["retry-after"] == str(math.ceil(refused.retry_after))
    assert "Daily token quota reached (limit 1000, used 900" in refused.message

    daily = (await limits_remaining(ctx))["daily_tokens"]
    assert (daily["used"], daily["remaining"]) == (900, 100)
    assert (await admit(ctx, estimate=100)).allowed


async def test_limits_are_checked_in_order_and_refusals_commit_nothing():
    ctx = key_context(key_id=7, rpm=2, tpm=100, daily_tokens=1000)
    refused = await admit(ctx, estimate=150)
    assert refused.code == "tokens"
    remaining = await limits_remaining(ctx)
    assert remaining["requests"]["remaining"] == 2 and remaining["daily_tokens"]["used"] == 0

    assert (await admit(ctx, estimate=10)).allowed
    assert (await admit(ctx, estimate=10)).allowed
    refused = await admit(ctx, estimate=10)
    assert refused.code == "requests"
    assert (await limits_remaining(ctx))["daily_tokens"]["used"] == 20


async def test_headers_report_limits_remaining_and_reset():
    ctx = key_context(key_id=8, rpm=60, tpm=1000)
    admission = await admit(ctx, estimate=100)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }
    only_rpm = await admit(key_context(key_id=9, rpm=5))
    assert set(only_rpm.headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }


def test_reset_durations_are_written_like_openai():
    assert format_reset(0) == "0s"
    assert format_reset(120) == "120ms"
    assert format_reset(999.2) == "1s"
    assert format_reset(6000) == "6s"
    assert format_reset(1500) == "1.5s"
    assert format_reset(90_000) == "1m30s"
    assert format_reset(360_000) == "6m0s"
    assert format_reset(3_600_000 + 61_000) == "1h1m1s"


async def test_settle_is_idempotent():
    ctx = key_context(key_id=10, tpm=1000, daily_tokens=10_000, max_concurrent=5)
    admission = await admit(ctx, estimate=100)
    await limits_settle(ctx, admission, actual_tokens=400)
    await limits_settle(ctx, admission, actual_tokens=400)
    remaining = await limits_remaining(ctx)
    assert remaining["tokens"]["remaining"] == 600
    assert remaining["daily_tokens"]["used"] == 400
    assert remaining["concurrent"]["in_flight"] == 0


async def test_key_without_limits_never_touches_redis():
    ctx = key_context(key_id=11)
    admission = await admit(ctx, estimate=10_000)
    assert admission.allowed and admission.headers == {} and admission.lease_id is None
    await limits_settle(ctx, admission, actual_tokens=20_000)
    assert redis_sync().dbsize() == 0
    assert await limits_remaining(ctx) == {"requests": None, "tokens": None, "daily_tokens": None, "concurrent": None}


async def test_rpm_only_key_takes_no_lease():
    ctx = key_context(key_id=12, rpm=100)
    admission = await admit(ctx)
    assert admission.allowed and admission.lease_id is None
    assert redis_sync().keys("gw:rl:*leases") == []


async def test_redis_down_fails_open_when_allowed(settings, tmp_path):
    settings.GATEWAY_LIMITS_FAIL_OPEN = True
    settings.REDIS_URL = f"unix://{tmp_path / 'nothing.sock'}"
    started = time.monotonic()
    admission = await admit(key_context(key_id=13, rpm=1, max_concurrent=1), estimate=10)
    assert admission.allowed and admission.lease_id is None
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("script", ["admit", "settle"])
async def test_scripts_reload_after_the_server_forgets_them(script):
    ctx = key_context(key_id=14, tpm=1000, max_concurrent=3)
    admission = await admit(ctx, estimate=100)
    redis_sync().script_flush()
    if script == "admit":
        assert (await admit(ctx, estimate=100)).headers["x-ratelimit-remaining-tokens"] == "800"
    else:
        await limits_settle(ctx, admission, actual_tokens=0)
        assert (await limits_remaining(ctx))["tokens"]["remaining"] == 1000


def _transactions() -> int:
    stats = redis_sync().info("commandstats")
    return int(stats.get("cmdstat_exec", {}).get("calls", 0))


async def test_concurrent_admissions_and_settlements_share_round_trips():
    ctx = key_context(key_id=40, max_concurrent=1000, rpm=100_000)
    before = _transactions()
    admissions = await asyncio.gather(*(admit(ctx, request_id=f"b{i}") for i in range(200)))
    # The first goes alone; the 199 that came while it was on its way share a few MULTI/EXEC round trips.
    assert 1 <= _transactions() - before <= 10
    assert all(a.allowed for a in admissions)
    assert len({a.lease_id for a in admissions}) == 200
    assert (await limits_remaining(ctx))["concurrent"]["in_flight"] == 200
    before = _transactions()
    await asyncio.gather(*(limits_settle(ctx, a, actual_tokens=None) for a in admissions))
    # 200 settlements in a handful of MULTI/EXEC batches, not 200 round trips of their own.
    assert 1 <= _transactions() - before <= 10
    assert (await limits_remaining(ctx))["concurrent"]["in_flight"] == 0


async def test_admission_works_after_the_server_forgot_its_scripts():
    redis_sync().script_flush()
    ctx = key_context(key_id=41, max_concurrent=2)
    first, second, third = [await admit(ctx, request_id=f"f{i}") for i in range(3)]
    assert first.allowed and second.allowed and not third.allowed
    redis_sync().script_flush()
    await limits_settle(ctx, first, actual_tokens=None)
    assert (await limits_remaining(ctx))["concurrent"]["in_flight"] == 1
    # Concurrent ones too (those that wait go in one batch, where each one's NOSCRIPT comes back alone).
    redis_sync().script_flush()
    wide = key_context(key_id=44, max_concurrent=15)
    results = await asyncio.gather(*(admit(wide, request_id=f"w{i}") for i in range(20)))
    assert sum(r.allowed for r in results) == 15
    assert {r.code for r in results if not r.allowed} == {"concurrency"}


async def test_an_admission_cancelled_at_any_point_leaves_no_lease_and_no_usage_marker():
    ctx = key_context(key_id=42, max_concurrent=5)
    client = redis_sync()

    def clear_marker(request_id):
        client.hdel(USAGE_INFLIGHT_KEY, request_id)
        client.zrem(USAGE_INFLIGHT_DEADLINES_KEY, request_id)

    async def admit_marked(request_id):
        return await limits_admit(ctx, estimate_tokens=0, request_id=request_id, marker=b'{"m":1}')

    for steps in range(16):
        # Cancelled before, while and after its script runs (queued behind another one), as `steps` grows:
        # the first half while the other one is on its way, the second half once it has answered.
        other = asyncio.ensure_future(admit_marked(f"other-{steps}"))
        task = asyncio.ensure_future(admit_marked(f"cancelled-{steps}"))
        if steps >= 8:
            await asyncio.wait([other])
        for _ in range(steps % 8):
            await asyncio.sleep(0)
        cancelled = task.cancel()
        settled = await other
        await limits_settle(ctx, settled, actual_tokens=None)
        clear_marker(f"other-{steps}")  # its usage event would
        if cancelled:
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            # It had already finished: its caller holds the admission, settles it and records the call.
            await limits_settle(ctx, task.result(), actual_tokens=None)
            clear_marker(f"cancelled-{steps}")
        request_id = f"cancelled-{steps}"
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if not (await limits_remaining(ctx))["concurrent"]["in_flight"]:
                if not client.hexists(USAGE_INFLIGHT_KEY, request_id):
                    break
            await asyncio.sleep(0.01)
        assert (await limits_remaining(ctx))["concurrent"]["in_flight"] == 0, f"lease left after {steps} steps"
        # The caller is gone: a marker left would be booked as a lost call (or outlive the call's own record).
        assert not client.hexists(USAGE_INFLIGHT_KEY, f"cancelled-{steps}"), f"marker left after {steps} steps"
        assert client.zscore(USAGE_INFLIGHT_DEADLINES_KEY, f"cancelled-{steps}") is None
