"""The playground in a real browser: Debian's chromium driven by Playwright, against a gateway process, the
simulator and real Redis, over loopback. Screenshots land in var/test-artifacts/."""

import time

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import Tier
from accounts.services import api_key_issue
from tests.support.browser import ARTIFACTS, choose_models, send
from tests.support.data import model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-browser-check-1234"
A_UPSTREAM = "sim-echo?tokens=30&interval_ms=60"
SLOW_UPSTREAM = "sim-echo?tokens=400&interval_ms=50"
XSS_PROMPT = "<img src=x onerror=alert(1)> <script>alert(2)</script> <b onmouseover=alert(3)>hi</b> **bold**"


@pytest.fixture
def user(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("pw-a", [(sim, A_UPSTREAM, 0)], input_price_per_million=1, output_price_per_million=2)
    model_create("pw-b", [(claude, "sim-claude?tokens=30&interval_ms=70", 0)])
    model_create("pw-slow", [(sim, SLOW_UPSTREAM, 0)])
    model_create("pw-broken", [(sim, "sim-echo?fail=500", 0)])
    model_create("pw-echo", [(sim, "sim-echo?echo=1", 0)])
    pat = get_user_model().objects.create_user("pat", password=PASSWORD)
    api_key_issue(owner=pat, tier=Tier.objects.create(name="browser", max_compare_models=3), name="pat-key")
    return pat


def login(page, base: str) -> None:
    page.goto(base + "/playground/")
    expect(page).to_have_url(f"{base}/login/?next=/playground/")
    page.fill("input[name=username]", "pat")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/playground/")


def column(page, model: str):
    return page.locator(f'[data-testid="column"][data-model="{model}"]')


def snapshot(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid="column"]')].map(c => [
            c.dataset.model,
            {state: c.dataset.state,
             length: (c.querySelector('[data-testid="column-output"]') || {textContent: ''}).textContent.length}]))"""
    )


def wait_states(page, expected: dict, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        states = snapshot(page)
        if all(states.get(model, {}).get("state") == state for model, state in expected.items()):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.05)


def test_playground_compares_streams_stops_and_keeps_history(gateway, user, browser, fresh_simulator):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    dialogs, console_errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    login(page, gateway.url)
    response = page.goto(gateway.url + "/playground/")
    assert "script-src 'self'" in response.headers["content-security-policy"]

    # Two models side by side, both columns growing while the stream runs.
    choose_models(page, ["pw-a", "pw-b"])
    send(page, "Tell me about streams")
    samples = []
    deadline = time.monotonic() + 20
    while True:
        states = snapshot(page)
        samples.append(states)
        if all(states[m]["state"] == "done" for m in ("pw-a", "pw-b")):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.08)
    for model in ("pw-a", "pw-b"):
        growing = [s[model]["length"] for s in samples if s[model]["state"] == "streaming" and s[model]["length"]]
        assert len(set(growing)) >= 5 and growing == sorted(growing), (model, growing)
    both_mid_stream = [
        s for s in samples if all(s[m]["state"] == "streaming" and s[m]["length"] > 0 for m in ("pw-a", "pw-b"))
    ]
    assert len(both_mid_stream) >= 3, samples
    for model in ("pw-a", "pw-b"):
        stats = column(page, model).get_by_test_id("column-stats").inner_text()
        assert "ms" in stats and "$" in stats and "30" in stats, stats
    first_answer = column(page, "pw-a").get_by_test_id("column-output").inner_text().strip()
    assert len(first_answer.split()) == 30
    page.screenshot(path=str(ARTIFACTS / "playground-compare-1280.png"), full_page=True)

    # A second turn: each column sends its own history.
    send(page, "And one more thing")
    wait_states(page, {"pw-a": "done", "pw-b": "done"})
    turns = [r for r in fresh_simulator.requests(model=A_UPSTREAM) if r["body"]]
    assert len(turns) == 2
    history = turns[-1]["body"]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"].strip() == first_answer
    page.screenshot(path=str(ARTIFACTS / "playground-second-turn-1280.png"), full_page=True)

    # Stop a slow run: the column stops, the upstream connection is closed.
    page.get_by_test_id("new-chat").click()
    choose_models(page, ["pw-slow"])
    send(page, "Take your time")
    deadline = time.monotonic() + 10
    while snapshot(page)["pw-slow"]["length"] < 40:
        if time.monotonic() > deadline:
            page.screenshot(path=str(ARTIFACTS / "debug-stop.png"), full_page=True)
            raise AssertionError(
                (snapshot(page), page.get_by_test_id("banner").inner_text(), page.get_by_test_id("status").inner_text())
            )
        time.sleep(0.05)
    page.get_by_test_id("stop").click()
    stopped_at = time.time()
    wait_states(page, {"pw-slow": "cancelled"}, timeout=5)
    [record] = fresh_simulator.wait_for_requests(
        lambda recs: len(recs) == 1 and recs[0]["disconnected"], timeout=3, model=SLOW_UPSTREAM
    )
    assert record["disconnected_at"] - stopped_at < 1.0
    assert record["tokens_sent"] < 100
    expect(page.get_by_test_id("stop")).to_be_disabled()
    assert snapshot(page)["pw-slow"]["length"] >= 40  # the partial answer stays visible

    # A failing model shows its error in its own column; the other answers in full.
    page.get_by_test_id("new-chat").click()
    choose_models(page, ["pw-a", "pw-broken"])
    send(page, "One of you will fail")
    wait_states(page, {"pw-a": "done", "pw-broken": "error"})
    error_text = column(page, "pw-broken").get_by_test_id("column-error").inner_text()
    assert "502" in error_text or "failed" in error_text, error_text
    assert len(column(page, "pw-a").get_by_test_id("column-output").inner_text().split()) == 30
    assert column(page, "pw-a").get_by_test_id("column-error").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "playground-error-1280.png"), full_page=True)

    # Model output that carries markup is inert: no script runs, no image loads, no handlers survive.
    page.get_by_test_id("new-chat").click()
    choose_models(page, ["pw-echo"])
    send(page, XSS_PROMPT)
    wait_states(page, {"pw-echo": "done"})
    output = column(page, "pw-echo").get_by_test_id("column-output")
    assert output.locator("img, script, [onerror], [onmouseover]").count() == 0
    assert output.locator("strong").count() == 1  # the Markdown still renders
    output.hover()
    page.wait_for_timeout(300)
    assert dialogs == []
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
    page.screenshot(path=str(ARTIFACTS / "playground-untrusted-output-1280.png"), full_page=True)
    storage = context.storage_state()
    context.close()

    # Phone width, dark scheme.
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", storage_state=storage, is_mobile=True
    )
    page = phone.new_page()
    page.goto(gateway.url + "/playground/")
    choose_models(page, ["pw-a", "pw-b"])
    send(page, "Hello from a phone")
    wait_states(page, {"pw-a": "done", "pw-b": "done"})
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width  # no horizontal page scroll
    page.screenshot(path=str(ARTIFACTS / "playground-phone-dark.png"), full_page=True)
    phone.close()
