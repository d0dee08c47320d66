"""The usage flush keeps the cost each event carries (priced when the call ran) and prices only events
without one; who paid (user, team) and the cache-write and reasoning counts reach the record; the usage
report counts queued events at the same figures the flush will store."""

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from django.contrib.auth import get_user_model
from django.db.models import Sum

from accounts.models import Team, Tier, UsageDaily, UsageRecord
from accounts.selectors import usage_report_rows
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.usage import USAGE_DEAD_KEY, USAGE_QUEUE_KEY, usage_flush, usage_record
from aigateway.redis import redis_sync
from providers.models import Model

NOW = time.time()
TODAY = datetime.fromtimestamp(NOW, tz=UTC).date()


@pytest.fixture
def api_key(db):
    tier = Tier.objects.create(name="cost-test")
    return api_key_issue(owner=service_user_get_or_create(), tier=tier, name="cost").api_key


@pytest.fixture
def model(db):
    return Model.objects.create(
        name="claude-test",
        input_price_per_million=Decimal("3"),
        output_price_per_million=Decimal("15"),
        cached_input_price_per_million=Decimal("0.3"),
        cache_write_price_per_million=Decimal("3.75"),
    )


def event(request_id: str, **fields) -> dict:
    return {
        "request_id": request_id,
        "api_key_id": None,
        "model": "claude-test",
        "endpoint": "chat.completions",
        "status_code": 200,
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "created_at": NOW,
        **fields,
    }


def record(*events: dict) -> None:
    async def push():
        for item in events:
            await usage_record(item)

    asyncio.run(push())


def test_the_cost_an_event_carries_is_stored_as_it_is(api_key, model):
    # At today's prices these tokens would cost 1000 * 3 + 100 * 15 = 4500 per million (0.0045).
    record(
        event("carried", api_key_id=api_key.pk, cost="0.00123456"),
        event("free-then", api_key_id=api_key.pk, cost="0"),
        event("unpriced", api_key_id=api_key.pk),
    )
    assert usage_flush() == 3
    costs = dict(UsageRecord.objects.values_list("request_id", "cost"))
    assert costs == {"carried": Decimal("0.00123456"), "free-then": Decimal(0), "unpriced": Decimal("0.0045")}
    # The daily rollup adds up the records' own costs.
    assert UsageDaily.objects.get(api_key=api_key).cost == Decimal("0.00573456")


def test_an_event_without_a_cost_is_priced_with_cache_reads_and_writes_apart(model):
    record(event("lost-like", prompt_tokens=1000, completion_tokens=100, cached_tokens=600, cache_write_tokens=300))
    usage_flush()
    stored = UsageRecord.objects.get(request_id="lost-like")
    assert (stored.cached_tokens, stored.cache_write_tokens) == (600, 300)
    # 100 * 3 + 600 * 0.3 + 300 * 3.75 + 100 * 15 = 300 + 180 + 1125 + 1500 = 3105 per million
    assert stored.cost == Decimal("0.003105")


def test_user_team_cache_writes_and_reasoning_reach_the_record(api_key, model):
    team = Team.objects.create(name="spenders")
    gone_user = get_user_model().objects.create(username="gone")
    gone_user_id = gone_user.pk
    gone_user.delete()
    record(
        event("who", user_id=api_key.owner_id, team_id=team.pk, cache_write_tokens=200, reasoning_tokens=40),
        event("gone", user_id=gone_user_id, team_id=team.pk + 1000),
        # Parts never larger than their whole.
        event("clamped", prompt_tokens=10, cached_tokens=4, cache_write_tokens=50, completion_tokens=3,
              reasoning_tokens=9),
    )  # fmt: skip
    assert usage_flush() == 3
    stored = {r.request_id: r for r in UsageRecord.objects.all()}
    who = stored["who"]
    assert (who.user_id, who.team_id, who.cache_write_tokens, who.reasoning_tokens) == (
        api_key.owner_id, team.pk, 200, 40,
    )  # fmt: skip
    # A user or team deleted since the call: the record stays, without them.
    assert (stored["gone"].user_id, stored["gone"].team_id) == (None, None)
    clamped = stored["clamped"]
    assert (clamped.cached_tokens, clamped.cache_write_tokens, clamped.reasoning_tokens) == (4, 6, 3)


@pytest.mark.parametrize(
    "fields",
    [
        {"cost": 0.5},  # a float: not exact
        {"cost": "a lot"},
        {"cost": "-0.01"},
        {"cost": "NaN"},
        {"cost": "Infinity"},
        {"cost": "1000000"},  # beyond what a record holds
        {"cost": "1" * 41},
        {"user_id": "seven"},
        {"team_id": 1.5},
        {"cache_write_tokens": "many"},
        {"reasoning_tokens": [3]},
    ],
)
def test_malformed_cost_or_owner_goes_to_the_dead_list(model, fields):
    record(event("bad", **fields), event("good", cost="0.001"))
    assert usage_flush() == 1
    assert redis_sync().llen(USAGE_QUEUE_KEY) == 0
    [dead] = redis_sync().lrange(USAGE_DEAD_KEY, 0, -1)
    assert orjson.loads(dead)["request_id"] == "bad"
    assert list(UsageRecord.objects.values_list("request_id", "cost")) == [("good", Decimal("0.001"))]


def test_the_report_counts_queued_events_at_their_own_cost_then_the_same_from_the_records(api_key, model):
    record(
        event("a", api_key_id=api_key.pk, cost="0.00123456"),
        event("b", api_key_id=api_key.pk, cost="0.00000001", prompt_tokens=7, completion_tokens=3),
        # No cost of its own (a lost record): priced at today's prices, 1000 * 3 + 100 * 15 = 0.0045.
        event("c", api_key_id=api_key.pk),
    )
    # The prices change while the events wait: only the event without a cost follows them.
    Model.objects.filter(pk=model.pk).update(input_price_per_million=Decimal(6), output_price_per_million=30)
    [pending] = usage_report_rows(api_key_id=api_key.pk, start=TODAY, end=TODAY)
    # 0.00123456 + 0.00000001 + (1000 * 6 + 100 * 30) / 1e6
    assert pending["cost"] == Decimal("0.01023457")
    assert (pending["requests"], pending["prompt_tokens"], pending["completion_tokens"]) == (3, 2007, 203)
    assert usage_flush() == 3
    assert not list(redis_sync().scan_iter("gw:usage:pending:*"))
    [flushed] = usage_report_rows(api_key_id=api_key.pk, start=TODAY, end=TODAY)
    assert flushed == pending
    assert UsageRecord.objects.aggregate(cost=Sum("cost"))["cost"] == Decimal("0.01023457")
