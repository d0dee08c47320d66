"""The response cache end to end: gateway processes over loopback, the simulator as the provider, real Redis.
Identical requests reach the provider once; a hit is served in every format and mode whichever wrote the
entry; scopes never share; the client's no-cache / no-store; TTL expiry; answers that must not be kept are
not; and the books of a hit (no cost, the cost saved, the original's tokens, rpm counted, budgets not)."""

import time
from decimal import Decimal

import anthropic
import httpx
import openai
import orjson
import pytest
import redis

from accounts.budgets import budget_counter_read, budget_ref
from accounts.keys import key_hash
from accounts.models import ApiKey, Budget, Team, Tier, UsageRecord
from accounts.services import api_key_issue
from accounts.usage import usage_flush
from aigateway.embedded_redis import redis_server_start
from aigateway.redis import redis_sync
from providers.response_cache import CACHE_PREFIX
from tests.support.compare import compare_stream
from tests.support.data import key_create, model_create, provider_create
from tests.support.ports import stop_process
from tests.support.usage import wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = "You answer briefly."
PROMPT = "Name a few colours of the rainbow"
DOORS = ("chat", "messages", "responses")


def _headers(key: str, **extra: str) -> dict:
    return {"Authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01", **extra}


def body_for(door: str, model: str, stream: bool, prompt: str = PROMPT, max_tokens: int = 64) -> tuple[str, dict]:
    """(path, body) of the same conversation in each wire format."""
    if door == "chat":
        body = {
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/chat/completions", body
    if door == "messages":
        return "/messages", {
            "model": model,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
        }
    return "/responses", {
        "model": model,
        "instructions": SYSTEM,
        "input": prompt,
        "max_output_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def _sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event."""
    events = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            events.append((name, "\n".join(data)))
    return events


class Reply:
    """One answer as the client got it: status, headers, the text pieces in order, the usage it reported."""

    def __init__(self, response: httpx.Response, door: str, stream: bool) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.raw = response.text
        self.pieces: list[str] = []
        self.usage: dict = {}
        self.errors: list[dict] = []
        if self.status == 200:
            (self._stream if stream else self._whole)(door)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def cache(self) -> str:
        return self.headers.get("x-gateway-cache", "")

    def _whole(self, door: str) -> None:
        data = orjson.loads(self.raw)
        if door == "chat":
            self.pieces = [data["choices"][0]["message"]["content"]]
            self.usage = {"in": data["usage"]["prompt_tokens"], "out": data["usage"]["completion_tokens"]}
        elif door == "messages":
            self.pieces = [block["text"] for block in data["content"] if block["type"] == "text"]
            self.usage = {"in": data["usage"]["input_tokens"], "out": data["usage"]["output_tokens"]}
        else:
            self.pieces = [
                part["text"]
                for item in data["output"]
                if item["type"] == "message"
                for part in item["content"]
                if part["type"] == "output_text"
            ]
            self.usage = {"in": data["usage"]["input_tokens"], "out": data["usage"]["output_tokens"]}

    def _stream(self, door: str) -> None:
        events = _sse(self.raw)
        if door == "chat":
            assert events[-1][1] == "[DONE]", events[-3:]
            chunks = [orjson.loads(data) for _, data in events[:-1]]
            self.errors = [chunk["error"] for chunk in chunks if "error" in chunk]
            if self.errors:
                return
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            for chunk in chunks:
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        self.pieces.append(choice["delta"]["content"])
                if chunk.get("usage"):
                    self.usage = {"in": chunk["usage"]["prompt_tokens"], "out": chunk["usage"]["completion_tokens"]}
            assert any(choice["finish_reason"] for chunk in chunks for choice in chunk["choices"])
        elif door == "messages":
            names = [name for name, _ in events]
            assert names[0] == "message_start" and names[-1] == "message_stop", names
            assert "message_delta" in names
            for name, data in events:
                payload = orjson.loads(data)
                if name == "message_start":
                    self.usage["in"] = payload["message"]["usage"]["input_tokens"]
                elif name == "content_block_delta" and payload["delta"]["type"] == "text_delta":
                    self.pieces.append(payload["delta"]["text"])
                elif name == "message_delta":
                    # The final count, the prompt's included once the provider reported it.
                    self.usage["out"] = payload["usage"]["output_tokens"]
                    self.usage["in"] = payload["usage"].get("input_tokens", self.usage["in"])
        else:
            names = [name for name, _ in events]
            assert names[0] == "response.created" and names[-1] == "response.completed", names
            for name, data in events:
                payload = orjson.loads(data)
                if name == "response.output_text.delta":
                    self.pieces.append(payload["delta"])
                elif name == "response.completed":
                    usage = payload["response"]["usage"]
                    self.usage = {"in": usage["input_tokens"], "out": usage["output_tokens"]}


def ask(gateway, key: str, door: str, model: str, *, stream: bool = False, headers: dict | None = None, **kw) -> Reply:
    path, body = body_for(door, model, stream, **kw)
    response = httpx.post(gateway.openai_base + path, json=body, headers=_headers(key, **(headers or {})), timeout=30)
    return Reply(response, door, stream)


def cached_keys() -> list[bytes]:
    return list(redis_sync().scan_iter(match=CACHE_PREFIX + "*"))


def _tier_key(tier: str, *, ttl: int = 60, team: Team | None = None, user=None, **limits) -> str:
    plaintext = key_create(tier, user=user, cache_ttl_seconds=ttl, **limits)
    if team is not None:
        ApiKey.objects.filter(key_hash=key_hash(plaintext)).update(team=team)
    return plaintext


@pytest.fixture
def sim_models(fresh_simulator, redis_clean):
    """`gpt` on an OpenAI-dialect provider, `claude` on an Anthropic-dialect one, priced, and slower ones."""
    openai_sim = provider_create("openai-sim", fresh_simulator.openai_base)
    anthropic_sim = provider_create("anthropic-sim", fresh_simulator.anthropic_base, dialect="anthropic")
    prices = {"input_price_per_million": Decimal("2"), "output_price_per_million": Decimal("8")}
    model_create("gpt", [(openai_sim, "sim-mini?tokens=9", 0)], **prices)
    model_create("claude", [(anthropic_sim, "sim-claude?tokens=9", 0)], **prices)
    model_create("gpt-slow", [(openai_sim, "sim-mini?tokens=30&interval_ms=60", 0)])
    model_create("gpt-drop", [(openai_sim, "sim-mini?tokens=10&drop_after=3", 0)])
    model_create("gpt-fail", [(openai_sim, "sim-mini?fail=500", 0)])
    model_create("gpt-long", [(openai_sim, "sim-mini?tokens=400", 0)])
    model_create("gpt-tools", [(openai_sim, "sim-mini", 0)])
    return fresh_simulator


def test_identical_requests_across_two_gateway_processes_reach_the_provider_once(gateway_factory, sim_models):
    key = _tier_key("cached")
    first, second = gateway_factory(), gateway_factory()
    replies = [ask(first, key, "chat", "gpt")]
    eventually(lambda: len(cached_keys()) == 1, timeout=5)  # stored once its response is on its way
    replies += [ask(first, key, "chat", "gpt", stream=True)]
    replies += [ask(second, key, "chat", "gpt", stream=stream) for stream in (False, True)]
    replies += [ask(gw, key, "chat", "gpt") for gw in (second, first)]
    assert [reply.status for reply in replies] == [200] * 6
    assert [reply.cache for reply in replies] == ["miss", "hit", "hit", "hit", "hit", "hit"]
    assert len({reply.text for reply in replies}) == 1 and replies[0].text
    assert len(sim_models.requests()) == 1
    assert {reply.usage["out"] for reply in replies} == {9}


WRITERS = [(door, stream, "gpt") for door in DOORS for stream in (False, True)] + [
    ("messages", True, "claude"),
    ("chat", False, "claude"),
]


@pytest.mark.parametrize(("writer", "stream", "model"), WRITERS)
def test_a_hit_in_every_format_and_mode_from_an_entry_another_wrote(gateway, sim_models, writer, stream, model):
    key = _tier_key("cached")
    original = ask(gateway, key, writer, model, stream=stream)
    assert original.status == 200 and original.cache == "miss", original.raw
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    for door in DOORS:
        for mode in (False, True):
            reply = ask(gateway, key, door, model, stream=mode)
            assert reply.status == 200, reply.raw
            assert reply.cache == "hit", (door, mode)
            assert reply.text == original.text, (door, mode)
            assert reply.usage == original.usage, (door, mode)
            if mode and stream and door == writer:
                # A stream replays the chunks the original streamed.
                assert reply.pieces == original.pieces
    assert len(sim_models.requests()) == 1


def test_official_sdks_read_streamed_hits(gateway, sim_models):
    key = _tier_key("cached")
    assert ask(gateway, key, "chat", "gpt").cache == "miss"
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    expected = ask(gateway, key, "chat", "gpt").text
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    _, chat = body_for("chat", "gpt", True)
    chunks = list(client.chat.completions.create(**chat))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 9
    _, responses_body = body_for("responses", "gpt", True)
    events = list(client.responses.create(**responses_body))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == expected
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    _, message = body_for("messages", "gpt", True)
    # This SDK release takes no `temperature` argument: it goes in the body as the others sent it.
    extra = {"temperature": message.pop("temperature")}
    events = list(claude.messages.create(**message, extra_body=extra))
    assert [events[0].type, events[-1].type] == ["message_start", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == expected
    assert [e.usage.output_tokens for e in events if e.type == "message_delta"] == [9]
    assert len(sim_models.requests()) == 1


def test_tool_call_answers_are_cached_like_any_other(gateway, sim_models):
    key = _tier_key("cached")
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    body = {
        "model": "gpt-tools",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [tool],
    }
    first = httpx.post(gateway.openai_base + "/chat/completions", json=body, headers=_headers(key), timeout=30)
    assert first.headers["x-gateway-cache"] == "miss"
    call = first.json()["choices"][0]["message"]["tool_calls"][0]
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    anthropic_body = {
        "model": "gpt-tools",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
    }
    # The tool list differs from the OpenAI body by format only: the same canonical request, the same entry.
    second = httpx.post(gateway.openai_base + "/messages", json=anthropic_body, headers=_headers(key), timeout=30)
    assert second.headers["x-gateway-cache"] == "hit"
    use = [block for block in second.json()["content"] if block["type"] == "tool_use"][0]
    assert use["name"] == call["function"]["name"] and use["input"] == orjson.loads(call["function"]["arguments"])
    assert second.json()["stop_reason"] == "tool_use"
    assert len(sim_models.requests()) == 1


def test_two_teams_and_two_owners_never_share_an_entry(gateway, sim_models, django_user_model):
    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    keys = {
        "red": _tier_key("cached", team=red, user=alice),
        "blue": _tier_key("cached", team=blue, user=alice),
        "alice": _tier_key("cached", user=alice),
        "bob": _tier_key("cached", user=bob),
    }
    red_again = api_key_issue(owner=bob, tier=Tier.objects.get(name="cached"), name="red-2").plaintext
    ApiKey.objects.filter(key_hash=key_hash(red_again)).update(team=red)
    assert [ask(gateway, key, "chat", "gpt").cache for key in keys.values()] == ["miss"] * 4
    assert len(sim_models.requests()) == 4
    eventually(lambda: len(cached_keys()) == 4, timeout=5)
    # Within a scope the entry is shared: another member's key on the same team hits.
    assert ask(gateway, red_again, "chat", "gpt").cache == "hit"
    assert [ask(gateway, key, "chat", "gpt").cache for key in keys.values()] == ["hit"] * 4
    assert len(sim_models.requests()) == 4


def test_no_cache_stores_without_looking_and_no_store_does_neither(gateway, sim_models):
    key = _tier_key("cached")
    skipped = ask(gateway, key, "chat", "gpt", headers={"x-gateway-cache": "no-store"})
    assert skipped.status == 200 and skipped.cache == "bypass"
    time.sleep(0.3)
    assert cached_keys() == []
    assert ask(gateway, key, "chat", "gpt").cache == "miss"
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    assert ask(gateway, key, "chat", "gpt").cache == "hit"
    fresh = ask(gateway, key, "chat", "gpt", stream=True, headers={"x-gateway-cache": "no-cache"})
    assert fresh.status == 200 and fresh.cache == "bypass"
    assert len(sim_models.requests()) == 3
    # What no-cache fetched replaced the entry (its TTL starts again).
    eventually(lambda: redis_sync().ttl(cached_keys()[0]) >= 59, timeout=5)
    bad = ask(gateway, key, "chat", "gpt", headers={"x-gateway-cache": "sometimes"})
    assert bad.status == 400
    assert "x-gateway-cache" in orjson.loads(bad.raw)["error"]["message"]


def test_a_key_without_the_cache_is_answered_by_the_provider_every_time(gateway, sim_models):
    key = _tier_key("uncached", ttl=0)
    replies = [ask(gateway, key, "messages", "gpt", stream=stream) for stream in (False, True, False)]
    assert [reply.cache for reply in replies] == ["bypass"] * 3
    assert len(sim_models.requests()) == 3 and cached_keys() == []


def test_the_most_specific_ttl_wins(gateway, sim_models):
    team = Team.objects.create(name="no-cache-team", cache_ttl_seconds=0)
    off_by_team = _tier_key("cached", team=team)
    on_by_key = _tier_key("cached", team=team)
    ApiKey.objects.filter(key_hash=key_hash(on_by_key)).update(cache_ttl_seconds=30)
    assert ask(gateway, off_by_team, "chat", "gpt").cache == "bypass"
    assert ask(gateway, on_by_key, "chat", "gpt").cache == "miss"
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    assert 25 <= redis_sync().ttl(cached_keys()[0]) <= 30


def test_an_entry_expires_with_its_ttl(gateway, sim_models):
    key = _tier_key("short", ttl=1)
    assert ask(gateway, key, "chat", "gpt").cache == "miss"
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    assert ask(gateway, key, "chat", "gpt").cache == "hit"
    eventually(lambda: cached_keys() == [], timeout=5)
    assert ask(gateway, key, "chat", "gpt").cache == "miss"
    assert len(sim_models.requests()) == 2


def test_errored_and_cut_off_answers_are_not_stored(gateway, sim_models):
    key = _tier_key("cached")
    dropped = ask(gateway, key, "chat", "gpt-drop", stream=True)
    assert dropped.status == 200 and dropped.errors
    failed = ask(gateway, key, "chat", "gpt-fail")
    assert failed.status >= 500
    # The client leaves after the first chunks: the call is booked 499 and nothing is kept.
    path, body = body_for("chat", "gpt-slow", True)
    with httpx.stream("POST", gateway.openai_base + path, json=body, headers=_headers(key), timeout=30) as response:
        assert response.headers["x-gateway-cache"] == "miss"
        for _ in zip(range(3), response.iter_lines(), strict=False):
            pass
    wait_usage(lambda events: any(e["model"] == "gpt-slow" and e["status_code"] == 499 for e in events), timeout=10)
    time.sleep(0.3)
    assert cached_keys() == []
    assert ask(gateway, key, "chat", "gpt-drop", stream=True).cache == "miss"


def test_an_answer_cut_by_a_cap_the_client_did_not_ask_for_is_not_stored(gateway, sim_models):
    key = _tier_key("capped", max_output_tokens=4)
    cut = ask(gateway, key, "chat", "gpt")  # asks for 64, the tier allows 4
    assert cut.status == 200 and cut.usage["out"] == 4
    time.sleep(0.3)
    assert cached_keys() == []
    asked = ask(gateway, key, "chat", "gpt", max_tokens=4)  # the same cap, asked for: kept
    assert asked.cache == "miss"
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    assert ask(gateway, key, "chat", "gpt", max_tokens=4).cache == "hit"


def test_an_answer_larger_than_the_entry_limit_is_not_stored(gateway_factory, sim_models):
    small = gateway_factory(GATEWAY_CACHE_MAX_BYTES="300")
    key = _tier_key("cached")
    assert ask(small, key, "chat", "gpt-long").cache == "miss"
    assert ask(small, key, "chat", "gpt").cache == "miss"
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    assert ask(small, key, "chat", "gpt-long").cache == "miss"
    assert ask(small, key, "chat", "gpt").cache == "hit"


def test_a_hit_is_booked_with_the_originals_tokens_no_cost_and_the_cost_saved(gateway, sim_models):
    key = _tier_key("rpm-3", rpm=3)
    api_key = ApiKey.objects.get(key_hash=key_hash(key))
    budget = Budget.objects.create(scope="key", api_key=api_key, period="month", amount=Decimal(10))
    miss = ask(gateway, key, "chat", "gpt")
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    spent_after_miss = budget_counter_read(budget_ref(budget))[0]
    hits = [ask(gateway, key, door, "gpt", stream=True) for door in ("messages", "responses")]
    assert [reply.cache for reply in hits] == ["hit", "hit"]
    # Limits still count the request: a fourth call in the minute is refused, hit or not.
    refused = ask(gateway, key, "chat", "gpt")
    assert refused.status == 429 and refused.headers["x-gateway-cache"] == "hit"
    wait_usage(lambda events: sum(e.get("cache_hit", False) for e in events) >= 2, timeout=10)
    usage_flush()
    records = list(UsageRecord.objects.filter(api_key=api_key, status_code=200).order_by("created_at"))
    original, *replayed = records
    assert original.request_id == miss.headers["x-request-id"] and not original.cache_hit
    assert original.cost == (Decimal(original.prompt_tokens) * 2 + Decimal(original.completion_tokens) * 8) / 10**6
    assert original.cost > 0 and original.cost_saved == 0
    assert [r.request_id for r in replayed] == [reply.headers["x-request-id"] for reply in hits]
    for record in replayed:
        assert record.cache_hit and record.cost == 0 and record.cost_saved == original.cost
        assert (record.prompt_tokens, record.completion_tokens) == (original.prompt_tokens, original.completion_tokens)
        assert record.provider == "" and record.model == "gpt" and record.stream
        assert record.endpoint in ("messages", "responses")
    # Budgets are not charged for hits.
    assert budget_counter_read(budget_ref(budget))[0] == spent_after_miss == original.cost


def test_compare_runs_use_the_cache_and_say_so_per_model(gateway, sim_models):
    key = _tier_key("cached")
    body = {"models": ["gpt", "claude"], "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
    first = compare_stream(gateway.url, key, body)
    eventually(lambda: len(cached_keys()) == 2, timeout=5)
    second = compare_stream(gateway.url, key, body)
    for run, expected in ((first, "miss"), (second, "hit")):
        assert [run.of(model, "start")[0]["cache"] for model in ("gpt", "claude")] == [expected] * 2
    for model in ("gpt", "claude"):
        done = second.of(model, "done")[0]
        assert done["cached"] and done["cost"] == 0
        assert not first.of(model, "done")[0]["cached"]
        assert first.text(model) and first.text(model) == second.text(model)
    assert len(sim_models.requests()) == 2


def test_cache_metrics_count_hits_misses_bypasses_and_stored_bytes(gateway, sim_models):
    key = _tier_key("cached")
    before = _metrics(gateway)
    ask(gateway, key, "chat", "gpt")
    eventually(lambda: len(cached_keys()) == 1, timeout=5)
    ask(gateway, key, "chat", "gpt")
    ask(gateway, key, "chat", "gpt", headers={"x-gateway-cache": "no-store"})

    def moved():
        after = _metrics(gateway)
        stored = 'gateway_cache_stored_bytes_total{model="gpt"}'
        return all(after.get(name, 0) - before.get(name, 0) >= 1 for name in _CACHE_SERIES) and after.get(
            stored, 0
        ) > before.get(stored, 0)

    eventually(moved, timeout=10)


_CACHE_SERIES = [f'gateway_cache_requests_total{{result="{result}"}}' for result in ("hit", "miss", "bypass")]


def _metrics(gateway) -> dict[str, float]:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith("gateway_cache_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.fixture
def cache_redis(tmp_path):
    """A Redis of its own for the cache, as GATEWAY_CACHE_REDIS_URL points at one."""
    socket_path = tmp_path / "cache.sock"
    process = redis_server_start(socket_path=socket_path, data_dir=tmp_path)
    yield f"unix://{socket_path}"
    stop_process(process)


def test_a_cache_in_a_redis_of_its_own(gateway_factory, sim_models, cache_redis):
    gateway = gateway_factory(GATEWAY_CACHE_REDIS_URL=cache_redis)
    key = _tier_key("cached", rpm=100)
    assert ask(gateway, key, "chat", "gpt").cache == "miss"
    separate = redis.Redis.from_url(cache_redis)
    try:
        eventually(lambda: len(list(separate.scan_iter(match=CACHE_PREFIX + "*"))) == 1, timeout=5)
        assert cached_keys() == []  # nothing in the gateway's own Redis
        hit = ask(gateway, key, "messages", "gpt", stream=True)
        assert hit.cache == "hit" and hit.text
        assert hit.headers["anthropic-ratelimit-requests-remaining"] == "98"
        assert len(sim_models.requests()) == 1
    finally:
        separate.close()
