"""The playground marks answers from the response cache: Debian's chromium driven by Playwright, against a
gateway process, the simulator and real Redis, over loopback. A key whose tier caches answers runs the same
prompt twice in two models: the second run's columns say "cached", cost $0 and call no provider; the first
run's and a new prompt's do not."""

import time

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import Tier, UsageRecord
from accounts.services import api_key_issue
from tests.support.browser import ARTIFACTS
from tests.support.data import model_create, provider_create
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-browser-cache-1234"
UPSTREAMS = {"pw-a": "sim-echo?tokens=20&interval_ms=20", "pw-b": "sim-claude?tokens=20&interval_ms=20"}


@pytest.fixture
def user(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("pw-a", [(sim, UPSTREAMS["pw-a"], 0)], input_price_per_million=1, output_price_per_million=2)
    model_create("pw-b", [(claude, UPSTREAMS["pw-b"], 0)], input_price_per_million=3, output_price_per_million=4)
    pat = get_user_model().objects.create_user("pat", password=PASSWORD)
    tier = Tier.objects.create(name="cached", max_compare_models=2, cache_ttl_seconds=300)
    api_key_issue(owner=pat, tier=tier, name="pat-key")
    return pat


def column(page, model: str):
    return page.locator(f'[data-testid="column"][data-model="{model}"]')


def run(page, text: str) -> None:
    prompt = page.get_by_test_id("prompt")
    prompt.fill(text)
    prompt.press("Enter")
    deadline = time.monotonic() + 20
    while not all(column(page, model).get_attribute("data-state") == "done" for model in UPSTREAMS):
        assert time.monotonic() < deadline, [column(page, model).get_attribute("data-state") for model in UPSTREAMS]
        time.sleep(0.05)


def answers(page) -> dict[str, str]:
    return {model: column(page, model).get_by_test_id("column-output").inner_text().strip() for model in UPSTREAMS}


def costs(page) -> dict[str, str]:
    cost = '[data-testid="column-stats"] .stat:nth-child(4) .stat-value'
    return {model: column(page, model).locator(cost).inner_text() for model in UPSTREAMS}


def upstream_calls(simulator) -> int:
    return sum(len(simulator.requests(model=upstream)) for upstream in UPSTREAMS.values())


def test_second_run_of_the_same_prompt_shows_cached_badges(
    gateway, celery_worker, user, browser, fresh_simulator, monkeypatch
):
    celery_worker(beat=True, flush_seconds=0.5)
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    # Set after the worker started, so it stays out of the worker's environment.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.goto(gateway.url + "/playground/")
    page.fill("input[name=username]", "pat")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(gateway.url + "/playground/")
    expect(page.get_by_test_id("column")).to_have_count(2)

    # First run: the providers answer; no badge.
    run(page, "Tell me about caches")
    first = answers(page)
    calls = upstream_calls(fresh_simulator)
    assert calls == 2 and all(len(text.split()) == 20 for text in first.values()), first
    for model in UPSTREAMS:
        expect(column(page, model).get_by_test_id("cached-badge")).to_be_hidden()
    assert all(cost not in ("$0", "—") for cost in costs(page).values()), costs(page)

    # The same prompt again, in a new chat (so each model is sent exactly the same messages): from the cache.
    page.get_by_test_id("new-chat").click()
    run(page, "Tell me about caches")
    for model in UPSTREAMS:
        badge = column(page, model).get_by_test_id("cached-badge")
        expect(badge).to_be_visible()
        expect(badge).to_have_text("cached")
    assert answers(page) == first
    assert costs(page) == {"pw-a": "$0", "pw-b": "$0"}
    assert upstream_calls(fresh_simulator) == calls
    page.screenshot(path=str(ARTIFACTS / "playground-cached-1280.png"), full_page=True)

    # A new prompt goes to the providers: the badges go away.
    run(page, "Something else")
    for model in UPSTREAMS:
        expect(column(page, model).get_by_test_id("cached-badge")).to_be_hidden()
    assert upstream_calls(fresh_simulator) == calls + 2
    assert not console_errors, console_errors

    # The books agree: two hits, each costing nothing and saving what its original answer cost.
    eventually(lambda: UsageRecord.objects.count() >= 6, timeout=15, what="usage records flushed")
    hits = list(UsageRecord.objects.filter(cache_hit=True).order_by("model"))
    assert [(hit.model, hit.cost) for hit in hits] == [("pw-a", 0), ("pw-b", 0)]
    originals = {r.model: r.cost for r in UsageRecord.objects.filter(cache_hit=False).order_by("created_at")[:2]}
    assert {hit.model: hit.cost_saved for hit in hits} == originals
    context.close()
