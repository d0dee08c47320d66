"""Budgets in money, end to end: real gateway processes, real Redis, the simulator over loopback, the real
Celery worker writing usage records. Spend never passes a hard budget, a refusal says which budget and is
not retried by the SDKs, and the counters are rebuilt from the records when Redis loses them."""

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from django.contrib.auth import get_user_model
from websockets.sync.client import connect as ws_connect

from accounts.budgets import BUDGET_KEY_PREFIX, BudgetRef, budget_ref, from_units, money, period_bounds, to_units
from accounts.keys import key_hash
from accounts.models import ApiKey, Budget, Team, UsageRecord
from aigateway.redis import redis_sync
from tests.support.compare import compare_stream
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import leases_held
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "How much does this cost?"}]
# Dear prices, so a handful of calls spends cents: per million tokens.
PRICE_IN, PRICE_OUT = Decimal("1000"), Decimal("3000")
MAX_TOKENS = 10


@pytest.fixture
def priced(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    prices = {"input_price_per_million": PRICE_IN, "output_price_per_million": PRICE_OUT}
    model_create("paid", [(sim, "sim-mini?tokens=10", 0)], **prices)
    model_create("paid-claude", [(claude, "sim-claude?tokens=10", 0)], **prices)
    model_create("paid-slow", [(sim, "sim-mini?tokens=10&interval_ms=40", 0)], **prices)
    model_create("paid-long", [(sim, "sim-mini?tokens=30&interval_ms=60", 0)], **prices)


def api_key_of(plaintext: str) -> ApiKey:
    return ApiKey.objects.get(key_hash=key_hash(plaintext))


def chat_body(model: str = "paid", **extra) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, **extra}


def max_cost(body: dict) -> Decimal:
    """What the gateway reserves for `body`: one token per byte of the body at the input price, the output
    cap at the output price (the same figure the gateway computes, rounded up to 1e-8)."""
    size = len(orjson.dumps(body))
    return from_units(to_units((size * PRICE_IN + body["max_tokens"] * PRICE_OUT) / Decimal(1_000_000)))


def counter(budget: Budget) -> tuple[Decimal, Decimal]:
    key, _ = budget_ref(budget).counter()
    spent, reserved = redis_sync().hmget(key, "s", "r")
    return from_units(int(spent or 0)), from_units(int(reserved or 0))


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def post(url: str, key: str, body: dict) -> httpx.Response:
    # The body goes as orjson writes it, so its size is the one max_cost counts.
    return httpx.post(url, content=orjson.dumps(body), headers=auth(key), timeout=30)


def records_cost(**filters) -> Decimal:
    # Summed here: SQLite adds decimals as floats.
    return sum(UsageRecord.objects.filter(**filters).values_list("cost", flat=True), Decimal(0))


def test_a_refusal_names_the_budget_in_every_door_and_the_sdks_do_not_retry(gateway, priced):
    key = key_create("budgeted")
    api_key = api_key_of(key)
    Budget.objects.create(scope="key", api_key=api_key, period="month", amount=Decimal("0.001"))

    response = post(gateway.openai_base + "/chat/completions", key, chat_body())
    assert response.status_code == 429
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
    _, end = period_bounds("month")
    for part in (f"API key '{api_key.name}'", "0.001 USD a month (UTC)", "0.00 USD spent", end.isoformat()[:10]):
        assert part in error["message"], error["message"]

    response = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "paid-claude", "max_tokens": MAX_TOKENS, "messages": MESSAGES},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert response.status_code == 429 and response.headers["x-should-retry"] == "false"
    body = response.json()
    assert body["type"] == "error" and "Budget exceeded" in body["error"]["message"]

    got = compare_stream(gateway.url, key, {"models": ["paid", "paid-claude"], "messages": MESSAGES, "max_tokens": 5})
    errors = [event for event in got.events if event["type"] == "error"]
    assert sorted(event["model"] for event in errors) == ["paid", "paid-claude"]
    assert {(event["status"], event["code"]) for event in errors} == {(429, "budget_exceeded")}

    socket_url = gateway.url.replace("http://", "ws://") + "/ws/playground/"
    with ws_connect(socket_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=10) as ws:
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(orjson.dumps({"type": "chat", "models": ["paid"], "messages": MESSAGES, "max_tokens": 5}).decode())
        frames = [orjson.loads(ws.recv(timeout=10))]
        while frames[-1]["type"] != "complete":
            frames.append(orjson.loads(ws.recv(timeout=10)))
    errors = [frame for frame in frames if frame["type"] == "error"]
    assert [(e["model"], e["status"], e["code"]) for e in errors] == [("paid", 429, "budget_exceeded")], frames

    # The official SDKs read x-should-retry: one request each, however many retries they are allowed.
    sent = []
    hooks = {"request": [sent.append]}
    with httpx.Client(event_hooks=hooks) as http:
        client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=3, http_client=http)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="paid", messages=MESSAGES, max_tokens=MAX_TOKENS)
        assert refused.value.code == "budget_exceeded"
    assert len(sent) == 1
    with httpx2.Client(event_hooks=hooks) as http:  # the Anthropic SDK's own HTTP library
        claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=3, http_client=http)
        with pytest.raises(anthropic.RateLimitError):
            claude.messages.create(model="paid-claude", max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert len(sent) == 2
    # Nothing was reserved by the refusals.
    assert counter(Budget.objects.get(api_key=api_key)) == (Decimal(0), Decimal(0))


def test_the_tightest_budget_refuses_and_all_of_them_count_the_spend(gateway, priced, celery_worker):
    celery_worker(flush_seconds=0.3)
    user = get_user_model().objects.create_user("budget-owner")
    team = Team.objects.create(name="research")
    team.members.add(user)
    key = key_create("team-tier", user=user)
    api_key = api_key_of(key)
    api_key.team = team
    api_key.save()
    body = chat_body()
    one = max_cost(body)
    budgets = {
        "key": Budget.objects.create(scope="key", api_key=api_key, period="day", amount=Decimal(100)),
        "user": Budget.objects.create(scope="user", user=user, period="week", amount=Decimal(100)),
        # Room for two calls' reservations, not three.
        "team": Budget.objects.create(scope="team", team=team, period="month", amount=one * Decimal("2.5")),
        "global": Budget.objects.create(scope="global", period="total", amount=Decimal(1000)),
    }
    statuses = []
    for _ in range(50):
        response = post(gateway.openai_base + "/chat/completions", key, body)
        statuses.append(response.status_code)
        if response.status_code == 429:
            message = response.json()["error"]["message"]
            assert "budget of team 'research'" in message and "a month (UTC)" in message, message
            break
    # Each call costs less than its reservation, so more than two fit, but never past the limit.
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429, statuses
    admitted = statuses.count(200)
    eventually(lambda: UsageRecord.objects.filter(status_code=200).count() == admitted, timeout=10, what="flush")
    spent = records_cost(status_code=200)
    assert spent <= budgets["team"].amount
    assert budgets["team"].amount - spent < one
    for budget in budgets.values():
        assert counter(budget) == (spent, Decimal(0)), budget.scope
    # The records know their user and team.
    assert UsageRecord.objects.filter(status_code=200, user=user, team=team).count() == admitted


def test_spend_is_exact_and_the_budget_api_reports_it(gateway, priced, celery_worker):
    celery_worker(flush_seconds=0.3)
    key = key_create("api-report")
    api_key = api_key_of(key)
    month = Budget.objects.create(scope="key", api_key=api_key, period="month", amount=Decimal("5"))
    total = Budget.objects.create(scope="global", period="total", amount=Decimal("1000000"), soft_thresholds=[0.9])
    for model in ("paid", "paid-claude"):
        assert post(gateway.openai_base + "/chat/completions", key, chat_body(model)).status_code == 200
    eventually(lambda: UsageRecord.objects.filter(api_key=api_key).count() == 2, timeout=10, what="flush")
    spent = records_cost(api_key=api_key)
    assert spent > 0 and spent == sum(r.cost for r in UsageRecord.objects.filter(api_key=api_key))

    response = httpx.get(gateway.url + "/api/v1/budget", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["currency"] == "USD"
    rows = {row["scope"]: row for row in report["budgets"]}
    assert set(rows) == {"key", "global"}
    _, month_end = period_bounds("month")
    assert rows["key"] == {
        "scope": "key",
        "name": api_key.name,
        "period": "month",
        "limit": "5.00",
        "spent": money(spent),
        "reserved": "0.00",
        "remaining": money(Decimal(5) - spent),
        "resets_at": month_end.isoformat().replace("+00:00", "Z"),
    }
    assert rows["global"]["resets_at"] is None and rows["global"]["limit"] == "1000000.00"
    assert Decimal(rows["global"]["spent"]) >= spent
    assert counter(month) == (spent, Decimal(0)) and counter(total)[1] == Decimal(0)

    bad = httpx.get(gateway.url + "/api/v1/budget", headers={"Authorization": "Bearer sk-gw-nope"}, timeout=10)
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    missing = httpx.get(gateway.url + "/api/v1/budget", timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    # Read-only: another method (with garbage bytes for a body) is a JSON 405 naming the method.
    wrong = httpx.post(gateway.url + "/api/v1/budget", content=b"\xff\x00garbage", headers=auth(key), timeout=10)
    assert wrong.status_code == 405 and "POST" in wrong.json()["error"]["message"]


def test_a_stream_is_never_cut_off_by_its_own_budget_and_its_reservation_holds_others_back(gateway, priced):
    key = key_create("one-stream")
    api_key = api_key_of(key)
    body = chat_body("paid-long", stream=True, max_tokens=30)
    one = max_cost(body)
    budget = Budget.objects.create(scope="key", api_key=api_key, period="day", amount=one * Decimal("1.5"))
    url = gateway.openai_base + "/chat/completions"
    with httpx.Client(timeout=30) as client:
        request = client.build_request("POST", url, content=orjson.dumps(body), headers=auth(key))
        stream = client.send(request, stream=True)
        assert stream.status_code == 200
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "chat.completion.chunk" in first
        # While it streams, its reservation leaves too little for another call like it.
        assert counter(budget)[1] == one
        refused = post(url, key, body)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        rest = list(lines)
        stream.close()
    assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest
    chunks = [orjson.loads(line[6:]) for line in [first, *rest] if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert len(text.split()) == 30
    eventually(lambda: counter(budget)[1] == 0, timeout=5, what="reservation released")
    assert 0 < counter(budget)[0] <= one


def test_a_client_leaving_mid_stream_settles_the_real_cost(gateway, priced, celery_worker):
    celery_worker(flush_seconds=0.3)
    key = key_create("leaver", max_concurrent=5)
    api_key = api_key_of(key)
    budget = Budget.objects.create(scope="key", api_key=api_key, period="day", amount=Decimal(10))
    body = chat_body("paid-long", stream=True, max_tokens=30)

    async def leave_after(chunks: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            url = gateway.openai_base + "/chat/completions"
            async with client.stream("POST", url, content=orjson.dumps(body), headers=auth(key)) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: {")
                    if seen >= chunks:
                        return

    asyncio.run(leave_after(5))
    eventually(lambda: UsageRecord.objects.filter(api_key=api_key).exists(), timeout=10, what="the 499 record")
    record = UsageRecord.objects.get(api_key=api_key)
    assert record.status_code == 499 and 0 < record.completion_tokens < 30 and record.cost > 0
    eventually(lambda: counter(budget) == (record.cost, Decimal(0)), timeout=5, what="settled to the real cost")
    assert leases_held() == 0


def test_counters_lost_with_redis_are_rebuilt_from_the_records(gateway, priced, celery_worker):
    celery_worker(flush_seconds=0.3)
    key = key_create("rebuilt")
    api_key = api_key_of(key)
    body = chat_body()
    one = max_cost(body)
    budget = Budget.objects.create(scope="key", api_key=api_key, period="month", amount=one * 3)
    url = gateway.openai_base + "/chat/completions"
    for _ in range(2):
        assert post(url, key, body).status_code == 200
    eventually(lambda: UsageRecord.objects.filter(api_key=api_key).count() == 2, timeout=10, what="flush")
    spent = records_cost(api_key=api_key)
    client = redis_sync()
    keys = list(client.scan_iter(f"{BUDGET_KEY_PREFIX}:*"))
    assert keys
    client.delete(*keys)  # what a Redis that restarted without its data has
    # The record the gateway now writes brings the month to more than the limit minus one reservation.
    UsageRecord.objects.create(
        request_id="req_before_the_restart",
        api_key=api_key,
        model="paid",
        endpoint="/v1/chat/completions",
        status_code=200,
        cost=one * 3 - spent - one / 2,
        created_at=datetime.now(UTC),
    )
    response = post(url, key, body)
    assert response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"
    assert counter(budget) == (records_cost(api_key=api_key), Decimal(0))


def test_two_gateway_processes_and_50_concurrent_clients_never_overspend(gateway_factory, priced, celery_worker):
    """The guarantee: however many processes and clients race, recorded spend never passes a hard budget,
    and the budget is not refused early: once every call has settled, what is left is less than one
    call's maximum cost."""
    celery_worker(flush_seconds=0.3)
    first, second = gateway_factory(), gateway_factory()
    team = Team.objects.create(name="racers")
    keys = []
    for index in range(5):
        plaintext = key_create(f"racer-{index}")
        api_key = api_key_of(plaintext)
        api_key.team = team
        api_key.save()
        keys.append(plaintext)
    body = chat_body("paid-slow", stream=True)
    one = max_cost(body)
    limit = (one * Decimal("23.7")).quantize(Decimal("0.00000001"))
    budget = Budget.objects.create(scope="team", team=team, period="month", amount=limit)
    urls = [first.openai_base, second.openai_base]

    async def client(index: int, session: httpx.AsyncClient, statuses: list[int]) -> None:
        # Each client calls until the budget refuses it.
        while True:
            url = urls[index % 2] + "/chat/completions"
            content = orjson.dumps(body)
            async with session.stream("POST", url, content=content, headers=auth(keys[index % len(keys)])) as response:
                await response.aread()
                statuses.append(response.status_code)
                if response.status_code != 200:
                    return

    async def race() -> list[int]:
        statuses: list[int] = []
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        async with httpx.AsyncClient(timeout=60, limits=limits) as session:
            await asyncio.gather(*(client(i, session, statuses) for i in range(50)))
            # Then one at a time, until refused with nothing in flight: no early refusal.
            await client(0, session, statuses)
        return statuses

    started = time.monotonic()
    statuses = asyncio.run(race())
    elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    eventually(
        lambda: UsageRecord.objects.filter(team=team, status_code=200).count() == admitted, timeout=15, what="flush"
    )
    spent = records_cost(team=team, status_code=200)
    left = limit - spent
    print(
        f"\nbudget {limit} USD, one call reserves {one}: {admitted} calls admitted, {statuses.count(429)} refused "
        f"in {elapsed:.1f}s; spent {spent}, left {left} ({left / one:.2f} of one call's maximum cost)"
    )
    assert spent <= limit
    assert left < one
    assert counter(budget) == (spent, Decimal(0))
    assert leases_held() == 0


def test_budget_units_are_exact():
    for amount in (Decimal("0.00000001"), Decimal("500"), Decimal("12.345678"), Decimal("99999999.99999999")):
        assert from_units(to_units(amount)) == amount
    # Rounded up, never down: a reservation never undercounts.
    assert to_units(Decimal("0.000000001")) == 1
    assert BudgetRef(1, "global", "global", "total", 5).counter() == (f"{BUDGET_KEY_PREFIX}:1:total", 0)
