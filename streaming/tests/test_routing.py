"""Routing end to end (gateway process, simulator, Redis, loopback HTTP): aliases, cross-model and
context fallbacks, rules and their conditions, canary shares, and the explanation headers."""

import asyncio

import anthropic
import httpx
import openai
import orjson
import pytest

from providers.models import RouteRule
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Route me"}]


@pytest.fixture
def sim(fresh_simulator):
    return provider_create("sim", fresh_simulator.openai_base)


def chat(gateway, key, body: dict, **headers) -> httpx.Response:
    headers["Authorization"] = f"Bearer {key}"
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def served(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    return response.headers["x-gateway-model"], response.headers["x-gateway-route"].split(";")[0]


def test_aliases_exact_names_first_then_patterns_by_order(gateway, sim):
    model_create("alpha", [(sim, "sim-echo", 0)], aliases=["gpt-4o*"], alias_order=1)
    model_create("beta", [(sim, "sim-mini", 0)], aliases=["gpt-4o-mini", "gpt-*"], alias_order=0)
    model_create("gpt-real", [(sim, "sim-large", 0)])
    key = key_create("aliases")
    assert served(chat(gateway, key, {"model": "gpt-4o-mini", "messages": MESSAGES})) == ("beta", "alias:gpt-4o-mini")
    # Both patterns match gpt-4o: beta's comes first by alias_order.
    assert served(chat(gateway, key, {"model": "gpt-4o", "messages": MESSAGES})) == ("beta", "alias:gpt-*")
    # A real model's own name always wins.
    assert served(chat(gateway, key, {"model": "gpt-real", "messages": MESSAGES})) == ("gpt-real", "default")
    answer = chat(gateway, key, {"model": "gpt-4o", "messages": MESSAGES}).json()
    assert answer["model"] == "gpt-4o"  # the body names what the client asked for
    missing = chat(gateway, key, {"model": "claude-3", "messages": MESSAGES})
    assert missing.status_code == 404 and "'claude-3'" in missing.json()["error"]["message"]
    listed = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0).models.list()
    assert sorted(m.id for m in listed) == ["alpha", "beta", "gpt-real"]


def test_models_list_shows_exact_aliases_when_asked(gateway_factory, sim):
    model_create("alpha", [(sim, "sim-echo", 0)], aliases=["gpt-4o-mini", "gpt-*"])
    key = key_create("listing")
    gateway = gateway_factory(GATEWAY_MODELS_LIST_ALIASES="True")
    listed = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0).models.list()
    assert sorted(m.id for m in listed) == ["alpha", "gpt-4o-mini"]


def test_tier_allow_list_applies_to_the_resolved_model(gateway, sim):
    alpha = model_create("alpha", [(sim, "sim-echo", 0)], aliases=["team-*"])
    model_create("beta", [(sim, "sim-mini", 0)], aliases=["other-*"])
    key = key_create("only-alpha", models=[alpha])
    assert served(chat(gateway, key, {"model": "team-x", "messages": MESSAGES})) == ("alpha", "alias:team-*")
    refused = chat(gateway, key, {"model": "other-x", "messages": MESSAGES})
    assert refused.status_code == 403 and "'beta'" in refused.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_model_when_every_deployment_fails(gateway, sim, stream):
    model_create("backup", [(sim, "sim-mini", 0)])
    model_create("main", [(sim, "sim-echo?fail=500", 0), (sim, "sim-echo?fail=503", 1)], fallbacks=["backup"])
    key = key_create("fallback")
    response = chat(gateway, key, {"model": "main", "messages": MESSAGES, "stream": stream})
    assert served(response) == ("backup", "fallback:backup")
    assert response.headers["x-gateway-route"].endswith("attempts=3")
    if stream:
        assert '"model":"main"' in response.text and "[DONE]" in response.text
    else:
        assert response.json()["model"] == "main" and response.json()["choices"][0]["message"]["content"]
    [event] = wait_usage(lambda events: len(events) == 1)
    assert (event["model"], event["requested_model"], event["route"]) == ("backup", "main", "fallback:backup")
    assert event["status_code"] == 200 and event["attempts"] == 3


def test_fallbacks_stay_within_the_keys_tier(gateway, sim):
    model_create("backup", [(sim, "sim-mini", 0)])
    main = model_create("main", [(sim, "sim-echo?fail=500", 0)], fallbacks=["backup"])
    key = key_create("main-only", models=[main])
    response = chat(gateway, key, {"model": "main", "messages": MESSAGES})
    assert response.status_code == 502 and "'main'" in response.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_context_window_overflow_goes_to_the_context_fallback(gateway, sim, stream):
    model_create("long-context", [(sim, "sim-large", 0)], context_window=100_000)
    model_create("short", [(sim, "sim-echo", 0)], context_window=50, context_fallbacks=["long-context"])
    key = key_create("context")
    short_prompt = {"model": "short", "messages": MESSAGES, "stream": stream}
    assert served(chat(gateway, key, short_prompt)) == ("short", "default")
    long_prompt = {**short_prompt, "messages": [{"role": "user", "content": "word " * 200}]}
    response = chat(gateway, key, long_prompt)
    assert served(response) == ("long-context", "context-fallback:long-context")
    events = wait_usage(lambda events: len(events) == 2)
    assert events[-1]["model"] == "long-context" and events[-1]["requested_model"] == "short"


def test_a_prompt_that_fits_nowhere_is_a_400(gateway, sim):
    model_create("tiny", [(sim, "sim-echo", 0)], context_window=10)
    key = key_create("tiny")
    response = chat(gateway, key, {"model": "tiny", "messages": [{"role": "user", "content": "word " * 100}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "'tiny'" in error["message"]


CONDITIONS = [
    # (when, a request that matches, a request that does not)
    ({"min_prompt_tokens": 100}, {"messages": [{"role": "user", "content": "x" * 600}]}, {}),
    ({"max_prompt_tokens": 40}, {}, {"messages": [{"role": "user", "content": "x" * 600}]}),
    ({"thinking": True}, {"reasoning_effort": "high"}, {}),
    ({"tools": True}, {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, {}),
    ({"stream": True}, {"stream": True}, {}),
    ({"model": "ent*"}, {}, {"model": "other"}),
    ({"tier": "gold"}, {}, {"_tier": "silver"}),
    ({"header": {"x-gateway-route": "background"}}, {"_header": "background"}, {"_header": "foreground"}),
    ({"metadata_user": "team-a-*"}, {"user": "team-a-17"}, {"user": "team-b-17"}),
]


@pytest.mark.parametrize(("when", "matching", "other"), CONDITIONS, ids=[next(iter(c[0])) for c in CONDITIONS])
def test_each_rule_condition(gateway, sim, when, matching, other):
    model_create("entry", [(sim, "sim-echo", 0)])
    model_create("other", [(sim, "sim-echo", 0)])
    target = model_create("special", [(sim, "sim-mini", 0)])
    RouteRule.objects.create(name="the-rule", when=when, target=target)
    keys = {"gold": key_create("gold"), "silver": key_create("silver")}

    def send(extra: dict) -> tuple[str, str]:
        body = {"model": "entry", "messages": MESSAGES, **{k: v for k, v in extra.items() if not k.startswith("_")}}
        headers = {"x-gateway-route": extra["_header"]} if "_header" in extra else {}
        return served(chat(gateway, keys[extra.get("_tier", "gold")], body, **headers))

    assert send(matching) == ("special", "rule:the-rule")
    assert send(other)[1] == "default"


def test_dialect_condition_and_anthropic_clients(gateway, fresh_simulator, sim):
    model_create("entry", [(sim, "sim-echo", 0)])
    target = model_create("special", [(sim, "sim-mini", 0)])
    RouteRule.objects.create(name="anthropic-only", when={"dialect": "anthropic"}, target=target)
    key = key_create("dialects")
    assert served(chat(gateway, key, {"model": "entry", "messages": MESSAGES}))[0] == "entry"
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    response = client.messages.with_raw_response.create(model="entry", max_tokens=20, messages=MESSAGES)
    assert response.headers["x-gateway-model"] == "special"
    assert response.parse().model == "entry"


def test_rules_go_in_order_and_a_canary_takes_its_share(gateway, sim):
    model_create("main", [(sim, "sim-echo", 0)])
    first = model_create("first", [(sim, "sim-mini", 0)])
    canary = model_create("main-next", [(sim, "sim-large", 0)])
    RouteRule.objects.create(name="never", order=0, when={"header": {"x-never": "1"}}, target=first)
    RouteRule.objects.create(name="canary", order=1, when={"model": "main"}, target=canary, share=0.1)
    key = key_create("canary")
    body = {"model": "main", "messages": MESSAGES, "max_tokens": 1}

    async def fire():
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            semaphore = asyncio.Semaphore(20)

            async def one():
                async with semaphore:
                    url = gateway.url + "/v1/chat/completions"
                    return await client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})

            return await asyncio.gather(*(one() for _ in range(1000)))

    responses = asyncio.run(fire())
    models = [served(r)[0] for r in responses]
    # Binomial(1000, 0.1): mean 100, standard deviation 9.5; 60..140 is more than four of them.
    assert 60 <= models.count("main-next") <= 140, models.count("main-next")
    assert models.count("main-next") + models.count("main") == 1000


def test_the_explanation_is_what_a_real_request_then_does(gateway, sim):
    from accounts.auth import key_context_load
    from accounts.keys import key_hash
    from providers.selectors import route_explain

    model_create("main", [(sim, "sim-echo", 0)], aliases=["claude-*"])
    small = model_create("small", [(sim, "sim-mini", 0)])
    RouteRule.objects.create(name="background", when={"header": {"x-gateway-route": "background"}}, target=small)
    key = key_create("explained")
    ctx = key_context_load(key_hash(key))
    cases = [
        ({"model": "claude-haiku-4-5", "messages": MESSAGES}, {}),
        ({"model": "claude-haiku-4-5", "messages": MESSAGES}, {"x-gateway-route": "background"}),
        ({"model": "main", "messages": MESSAGES}, {"x-gateway-route": "foreground"}),
    ]
    for body, headers in cases:
        [outcome] = route_explain(
            ctx=ctx, dialect="openai", headers=headers, body=body, body_size=len(orjson.dumps(body))
        ).outcomes
        assert served(chat(gateway, key, body, **headers)) == (outcome.decision.model, outcome.decision.route)
