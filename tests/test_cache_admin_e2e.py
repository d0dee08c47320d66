"""Response cache settings and purges made in Django admin reach a running gateway process: a tier's TTL turns
the cache on, a key's own TTL of 0 turns it off for that key, and purging a model's answers from the model list
makes the next identical request go to the provider again."""

import openai
import pytest
from django.urls import reverse

from accounts.models import ApiKey, Tier
from providers.response_cache import cache_entry_count
from tests.support.data import key_create, model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)
MESSAGES = [{"role": "user", "content": "the same question twice"}]
UPSTREAM = "sim-echo?tokens=5"


def test_ttl_and_purge_from_admin_reach_the_gateway(gateway, fresh_simulator, admin_client):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model = model_create("cache-m", [(sim, UPSTREAM, 0)], input_price_per_million=1, output_price_per_million=2)
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key_create("cached"), max_retries=0)
    tier, api_key = Tier.objects.get(name="cached"), ApiKey.objects.get(name="cached-key")

    def cache_result() -> str:
        reply = client.chat.completions.with_raw_response.create(model="cache-m", messages=MESSAGES)
        assert reply.parse().choices[0].message.content
        return reply.headers["x-gateway-cache"]

    def upstream_calls() -> int:
        return len(fresh_simulator.requests(model=UPSTREAM))

    def admin_saved(path: str, data: dict) -> None:
        response = admin_client.post(path, {**data, "_save": "Save"})
        assert response.status_code == 302, response.content.decode()[:3000]

    assert [cache_result(), cache_result()] == ["bypass", "bypass"]

    # The tier's TTL, set on its admin page: the next request is stored, the one after answered from the cache.
    admin_saved(
        reverse("admin:accounts_tier_change", args=[tier.pk]),
        {"name": "cached", "max_compare_models": "4", "cache_ttl_seconds": "300"},
    )
    eventually(lambda: cache_result() == "hit", timeout=10, what="the tier's TTL in force")
    calls = upstream_calls()
    assert [cache_result(), cache_result()] == ["hit", "hit"]
    assert upstream_calls() == calls
    assert cache_entry_count() == 1

    # Purged from the model list: the provider answers again, and the answer is cached anew.
    response = admin_client.post(
        reverse("admin:providers_model_changelist"),
        {"action": "purge_cached_answers", "_selected_action": [model.pk]},
    )
    assert response.status_code == 302
    assert cache_entry_count() == 0
    assert cache_result() == "miss"
    # Stored once its response is on its way (streaming.cache.STORE_DELAY_SECONDS), not before.
    eventually(lambda: cache_entry_count() == 1, timeout=5, what="the new answer stored")
    assert cache_result() == "hit"
    assert upstream_calls() == calls + 1

    # The key's own TTL of 0, set on its page, turns the cache off for that key.
    admin_saved(
        reverse("admin:accounts_apikey_change", args=[api_key.pk]),
        {
            "name": api_key.name,
            "tier": str(tier.pk),
            "team": "",
            "enabled": "on",
            "cache_ttl_seconds": "0",
            "budgets-TOTAL_FORMS": "0",
            "budgets-INITIAL_FORMS": "0",
        },
    )
    eventually(lambda: cache_result() == "bypass", timeout=10, what="the key's TTL of 0 in force")
