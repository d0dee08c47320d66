"""The admission's response cache lookup, against the real test Redis: an entry found makes the request a hit
that takes one request from the requests per minute and nothing else (no lease, no tokens, no budget
reservation, no usage marker); no entry, and the admission is the ordinary one, in the same round trip."""

import asyncio
from decimal import Decimal

from accounts.budgets import BudgetRef, to_units
from accounts.limits import limits_admit
from accounts.tests.test_limits import key_context
from accounts.usage import USAGE_INFLIGHT_KEY
from aigateway.redis import redis_sync

CACHE_KEY = "gw:cache:user:1:gpt:" + "a" * 64
BUDGET = BudgetRef(id=7, scope="key", name="k", period="total", limit_units=to_units(Decimal(1)))


def _ctx(**limits):
    return key_context(key_id=42, budgets=(BUDGET,), **limits)


def _held() -> dict:
    client = redis_sync()
    return {
        "leases": client.zcard("gw:rl:{42}:leases"),
        "tokens": client.get("gw:rl:{42}:tok"),
        "markers": client.hlen(USAGE_INFLIGHT_KEY),
        "reserved": int(client.hget(BUDGET.counter()[0], "r") or 0),
    }


async def _admit(ctx, request_id: str, cache_key: str | None = CACHE_KEY):
    redis_sync().hsetnx(BUDGET.counter()[0], "s", 0)  # a seeded counter, as the gateway keeps it
    return await limits_admit(
        ctx, estimate_tokens=50, request_id=request_id, marker=b"{}", max_cost_units=1000, cache_key=cache_key
    )


async def test_a_miss_is_the_ordinary_admission_and_a_hit_holds_nothing():
    ctx = _ctx(rpm=3, tpm=1000, max_concurrent=5, daily_tokens=10_000)
    miss = await _admit(ctx, "req_miss")
    assert miss.allowed and miss.cached is None and miss.lease_id and miss.marked and miss.budget_keys
    before = _held()
    assert before["leases"] == 1 and before["markers"] == 1 and before["reserved"] == 1000

    redis_sync().set(CACHE_KEY, b"stored answer")
    hit = await _admit(ctx, "req_hit")
    assert hit.allowed and hit.cached == b"stored answer"
    assert hit.lease_id is None and hit.reserved_tokens == 0 and not hit.marked and hit.budget_keys == ()
    assert _held() == before
    # Only the requests headers: the hit reserved no tokens to report on.
    assert set(hit.headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert hit.headers["x-ratelimit-remaining-requests"] == "1"


async def test_a_hit_still_counts_against_the_requests_per_minute():
    ctx = _ctx(rpm=2)
    redis_sync().set(CACHE_KEY, b"x")
    first, second, third = [await _admit(ctx, f"req_{i}") for i in range(3)]
    assert first.allowed and second.allowed
    assert not third.allowed and third.code == "requests" and third.cached == b"x"
    assert "retry-after" in third.headers


async def test_a_hit_is_admitted_when_the_tokens_concurrency_or_budget_are_spent():
    ctx = _ctx(tpm=60, max_concurrent=1)
    assert (await _admit(ctx, "req_holds_the_slot", cache_key=None)).allowed
    refused = await _admit(ctx, "req_refused", cache_key=None)
    assert not refused.allowed and refused.code == "concurrency"
    redis_sync().set(CACHE_KEY, b"x")
    assert (await _admit(ctx, "req_hit")).allowed


async def test_a_key_without_limits_looks_up_and_stores_its_marker_in_one_step():
    ctx = key_context(key_id=43)
    miss = await limits_admit(ctx, estimate_tokens=5, request_id="req_free", marker=b"{}", cache_key=CACHE_KEY)
    assert miss.allowed and miss.cached is None and miss.marked and miss.headers == {}
    assert redis_sync().hexists(USAGE_INFLIGHT_KEY, "req_free")
    redis_sync().set(CACHE_KEY, b"y")
    hit = await limits_admit(ctx, estimate_tokens=5, request_id="req_free_hit", marker=b"{}", cache_key=CACHE_KEY)
    assert hit.allowed and hit.cached == b"y" and not redis_sync().hexists(USAGE_INFLIGHT_KEY, "req_free_hit")


async def test_a_hit_cancelled_while_admitted_releases_nothing_it_did_not_take():
    ctx = _ctx(rpm=100, tpm=1000, max_concurrent=5)
    assert (await _admit(ctx, "req_other", cache_key=None)).allowed  # another call's lease and reservation
    before = _held()
    redis_sync().set(CACHE_KEY, b"z")
    tasks = [asyncio.ensure_future(_admit(ctx, f"req_gone_{i}")) for i in range(20)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.2)  # releases run in the background
    assert _held() == before
