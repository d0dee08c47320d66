"""The playground keeps its conversations on the server and resumes a turn after a reload: Debian's chromium driven
by Playwright against a real gateway process, the simulator (slow token rate) and real Redis, over loopback.
Screenshots of the History panel, light and dark, land in var/test-artifacts/."""

import re
import time

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import PlaygroundRun, Tier
from accounts.services import api_key_issue
from tests.support.browser import ARTIFACTS, choose_models, send
from tests.support.data import model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-history-check-1234"
TOKENS = {"hist-a": 50, "hist-b": 45}
UPSTREAM = {
    "hist-a": f"sim-echo?tokens={TOKENS['hist-a']}&interval_ms=80",
    "hist-b": f"sim-claude?tokens={TOKENS['hist-b']}&interval_ms=90",
}
PROMPT = "Tell me about resumable streams"
MODELS = list(UPSTREAM)


@pytest.fixture
def user(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("hist-a", [(sim, UPSTREAM["hist-a"], 0)], input_price_per_million=1, output_price_per_million=2)
    model_create("hist-b", [(claude, UPSTREAM["hist-b"], 0)])
    model_create("hist-fast", [(sim, "sim-echo?tokens=5&interval_ms=5", 0)])
    pat = get_user_model().objects.create_user("pat", password=PASSWORD)
    api_key_issue(owner=pat, tier=Tier.objects.create(name="history", max_compare_models=3), name="pat-key")
    return pat


def login(page, base: str) -> None:
    page.goto(base + "/playground/")
    page.fill("input[name=username]", "pat")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/playground/")


def columns(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid="column"]')].map(c => [
            c.dataset.model,
            {state: c.dataset.state,
             text: (c.querySelector('[data-testid="column-output"]') || {textContent: ''}).textContent}]))"""
    )


def wait_columns(page, check, timeout: float = 30.0, what: str = "columns") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = columns(page)
        if check(state):
            return state
        assert time.monotonic() < deadline, (what, state)
        time.sleep(0.05)


def all_done(state: dict) -> bool:
    return all(state.get(model, {}).get("state") == "done" for model in MODELS)


def run_id_of(page) -> int:
    match = re.search(r"[?&]run=(\d+)", page.url)
    assert match, page.url
    return int(match[1])


def test_a_reloaded_page_resumes_every_column_and_history_reopens_the_run(
    gateway, user, browser, fresh_simulator, monkeypatch
):
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    login(page, gateway.url)
    # A reference tab runs the same prompt and is never reloaded: the simulator answers a prompt the same way.
    reference = context.new_page()
    reference.goto(gateway.url + "/playground/")
    choose_models(reference, MODELS)
    page.goto(gateway.url + "/playground/")
    choose_models(page, MODELS)
    send(reference, PROMPT)
    send(page, PROMPT)

    # Mid-stream in both columns, the page reloads.
    before = wait_columns(
        page,
        lambda s: all(s[m]["state"] == "streaming" and len(s[m]["text"].split()) >= 8 for m in MODELS),
        what="both columns streaming",
    )
    run_id = run_id_of(page)
    page.reload()
    expect(page.get_by_test_id("prompt")).to_be_visible()
    assert run_id_of(page) == run_id
    # The columns come back with the prompt and pick the turn up where it is, then finish.
    resumed = wait_columns(page, lambda s: all(len(s.get(m, {}).get("text", "")) > 0 for m in MODELS), what="resumed")
    assert all(resumed[m]["state"] in ("streaming", "done") for m in MODELS), resumed
    after = wait_columns(page, all_done, what="resumed columns done")
    expected = wait_columns(reference, all_done, what="reference columns done")
    for model in MODELS:
        assert after[model]["text"].strip() == expected[model]["text"].strip(), model
        assert len(after[model]["text"].split()) == TOKENS[model]
        assert after[model]["text"].strip().startswith(before[model]["text"].strip()), model
    for model in MODELS:
        stats = (
            page.locator(f'[data-testid="column"][data-model="{model}"]').get_by_test_id("column-stats").inner_text()
        )
        assert str(TOKENS[model]) in stats and "ms" in stats, stats
    bubbles = page.locator(".bubble").all_inner_texts()
    assert bubbles.count(PROMPT) == 2, bubbles  # the prompt once per column, not repeated by the resume
    # The reload did not ask the providers again: one call per model per tab, none cut off.
    for upstream in UPSTREAM.values():
        records = fresh_simulator.requests(model=upstream)
        assert len(records) == 2 and not any(r["disconnected"] for r in records), records
    run = PlaygroundRun.objects.get(pk=run_id)
    assert run.user_id == user.pk and run.active_stream_id == "" and run.title == PROMPT
    for model in MODELS:
        answer = run.turns[0]["answers"][model]
        assert answer["status"] == "done" and answer["text"].strip() == expected[model]["text"].strip()
        assert answer["done"]["usage"]["completion_tokens"] == TOKENS[model]

    # The History list: both tabs' runs, newest first, this one marked as open.
    history = page.get_by_test_id("history-list")
    items = history.get_by_test_id("history-item")
    expect(items).to_have_count(2)
    mine = history.locator(f'[data-testid="history-item"][data-run-id="{run_id}"]')
    expect(mine).to_have_attribute("aria-current", "true")
    expect(mine).to_contain_text(PROMPT)
    expect(mine).to_contain_text("hist-a, hist-b")
    listed = [int(item.get_attribute("data-run-id")) for item in items.all()]
    assert listed == list(
        PlaygroundRun.objects.filter(user=user).order_by("-updated_at", "-pk").values_list("pk", flat=True)
    )
    panel = page.get_by_test_id("history")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(300)  # colour transitions
        panel.screenshot(path=str(ARTIFACTS / f"playground-history-{scheme}.png"))
    page.emulate_media(color_scheme="light")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "playground-history-resumed-1280.png"), full_page=True)

    # A new chat empties the columns; the history item reopens the run, ready to continue.
    page.get_by_test_id("new-chat").click()
    wait_columns(page, lambda s: not any(s[m]["text"] for m in MODELS), what="a new chat")
    assert "run=" not in page.url
    mine.click()
    reopened = wait_columns(page, all_done, what="reopened columns")
    for model in MODELS:
        assert reopened[model]["text"].strip() == expected[model]["text"].strip(), model
    assert run_id_of(page) == run_id
    choose_models(page, ["hist-fast"])
    send(page, "And in one sentence?")
    wait_columns(page, lambda s: s.get("hist-fast", {}).get("state") == "done", what="the follow-up")
    run.refresh_from_db()
    assert [t["prompt"] for t in run.turns] == [PROMPT, "And in one sentence?"]
    assert PlaygroundRun.objects.filter(user=user).count() == 2  # continued, not a new run
    [follow_up] = [r for r in fresh_simulator.requests(model="sim-echo?tokens=5&interval_ms=5")]
    assert follow_up["body"]["messages"][-1]["content"] == "And in one sentence?"
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
    context.close()


def test_a_dropped_socket_reconnects_and_resumes_after_its_last_frame(
    gateway, user, browser, fresh_simulator, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    login(page, gateway.url)
    # The page's sockets pass through Playwright, which can cut one as a lost network would.
    sockets = []

    def through(route):
        route.connect_to_server()
        sockets.append(route)

    page.route_web_socket(re.compile(r"/ws/playground/$"), through)
    reference = context.new_page()
    reference.goto(gateway.url + "/playground/")
    choose_models(reference, MODELS)
    page.goto(gateway.url + "/playground/")
    choose_models(page, MODELS)
    send(reference, PROMPT)
    send(page, PROMPT)
    wait_columns(
        page,
        lambda s: all(s[m]["state"] == "streaming" and len(s[m]["text"].split()) >= 8 for m in MODELS),
        what="both columns streaming",
    )
    opened = len(sockets)
    sockets[-1].close(code=1001, reason="network lost")  # the socket of the page as it is now
    expect(page.get_by_test_id("status")).to_contain_text("Reconnecting")
    after = wait_columns(page, all_done, what="columns done after the reconnect")
    expected = wait_columns(reference, all_done, what="reference columns done")
    assert len(sockets) == opened + 1  # one new socket, which resumed the turn
    for model in MODELS:
        # Every word once: nothing lost in the gap, nothing sent twice.
        assert after[model]["text"].strip() == expected[model]["text"].strip(), model
        assert len(after[model]["text"].split()) == TOKENS[model]
    expect(page.get_by_test_id("status")).to_contain_text("Done")
    for upstream in UPSTREAM.values():
        records = fresh_simulator.requests(model=upstream)
        assert len(records) == 2 and not any(r["disconnected"] for r in records), records
    page.screenshot(path=str(ARTIFACTS / "playground-reconnected-1280.png"), full_page=True)
    context.close()
