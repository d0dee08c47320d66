"""The request log viewer in a real browser (Debian's chromium driven by Playwright) against a gateway process, the
simulator and real Redis over loopback: a call made with a key whose tier logs full bodies is flushed to the log,
found by a phrase of its conversation in admin's search, its detail page draws the conversation as the playground
does (Markdown rendered through the sanitizer, markup inert) beside its usage, and "Open in playground" loads it
into the playground, whose next turn sends the logged conversation on. Screenshots land in var/test-artifacts/."""

import re

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import RequestLog, UsageRecord
from accounts.usage import usage_flush
from tests.support.browser import ARTIFACTS
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-ops-request-log-4321"
PHRASE = "lighthouse-zebra-quartet"
SYSTEM = "You are terse."
PROMPT = f"Please repeat {PHRASE} with **bold** words <img src=x onerror=alert(1)> back"
UPSTREAM = "sim-echo?echo=1"


@pytest.fixture
def logged_calls(gateway, fresh_simulator):
    """Two calls logged in full (only one says the phrase), flushed to the request log."""
    provider = provider_create("sim", fresh_simulator.openai_base)
    model_create("gpt", [(provider, UPSTREAM, 0)], input_price_per_million=2, output_price_per_million=8)
    key = key_create("logged", log_bodies="full")
    get_user_model().objects.create_superuser("ops", email="ops@example.com", password=PASSWORD)
    ids = []
    for prompt in (PROMPT, "Something else entirely"):
        body = {
            "model": "gpt",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        }
        response = httpx.post(
            gateway.openai_base + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-request-id"])
    wait_usage(lambda events: len(events) >= 2, timeout=10)
    usage_flush()
    assert sorted(RequestLog.objects.values_list("request_id", flat=True)) == sorted(ids)
    return ids


def test_a_logged_request_is_found_by_its_words_read_in_admin_and_opened_in_the_playground(
    gateway, fresh_simulator, logged_calls, browser, monkeypatch
):
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    phrase_id, other_id = logged_calls
    usage = UsageRecord.objects.get(request_id=phrase_id)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs, console_errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    page.goto(gateway.url + "/admin/login/?next=/admin/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(gateway.url + "/admin/")

    # Search the log for the phrase: one row, the call that said it.
    page.goto(gateway.url + "/admin/accounts/requestlog/")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    page.fill("#searchbar", PHRASE.upper())
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(phrase_id)
    assert other_id not in page.content()
    page.screenshot(path=str(ARTIFACTS / "request-log-search.png"), full_page=True)

    # Its page: the conversation drawn like the playground draws it, beside the usage record's figures.
    rows.first.get_by_role("link", name=phrase_id).click()
    expect(page).to_have_url(re.compile(r"/admin/accounts/requestlog/\d+/change/\?_changelist_filters=q%3D"))
    conversation = page.get_by_test_id("log-conversation")
    expect(page.get_by_test_id("log-system")).to_contain_text(SYSTEM)
    user = page.get_by_test_id("log-message")
    expect(user).to_have_count(1)
    expect(user).to_contain_text(PHRASE)
    answer = page.get_by_test_id("log-answer")
    expect(answer).to_contain_text(PHRASE)
    # Markdown rendered by the page's script (the server sent it as text)...
    expect(answer.locator(".gw-text.is-rendered strong")).to_have_text("bold")
    expect(user.locator("strong")).to_have_text("bold")
    # ...and the logged markup is text, never an element or a handler.
    assert conversation.locator("img, script, [onerror]").count() == 0
    expect(answer).to_contain_text("<img src=x onerror=alert(1)>")
    expect(page.get_by_test_id("usage-tokens")).to_have_text(
        f"{usage.prompt_tokens:,} in / {usage.completion_tokens:,} out"
    )
    expect(page.get_by_test_id("usage-provider")).to_have_text("sim")
    expect(page.get_by_test_id("usage-cost")).to_contain_text("USD")
    page.screenshot(path=str(ARTIFACTS / "request-log-detail.png"), full_page=True)

    # Open it in the playground: the logged model, system prompt and conversation, ready to go on.
    page.get_by_test_id("open-in-playground").click()
    expect(page).to_have_url(f"{gateway.url}/playground/?log={phrase_id}")
    column = page.locator('[data-testid="column"][data-model="gpt"]')
    expect(column).to_have_count(1)
    expect(page.get_by_test_id("column")).to_have_count(1)
    expect(column.locator(".bubble")).to_have_text(PROMPT)
    expect(column.get_by_test_id("column-output").locator("strong")).to_have_text("bold")
    expect(page.get_by_test_id("system-prompt")).to_have_value(SYSTEM)
    page.screenshot(path=str(ARTIFACTS / "request-log-playground.png"), full_page=True)

    fresh_simulator.reset()
    page.get_by_test_id("prompt").fill("And once more")
    page.get_by_test_id("prompt").press("Enter")
    [sent] = fresh_simulator.wait_for_requests(lambda records: len(records) == 1, timeout=10, model=UPSTREAM)
    messages = sent["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == SYSTEM and messages[1]["content"] == PROMPT
    assert messages[2]["content"].split() == PROMPT.split() and messages[3]["content"] == "And once more"
    assert dialogs == []
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
    context.close()


def test_a_member_who_is_not_staff_cannot_open_a_logged_request_in_the_playground(
    gateway, logged_calls, browser, monkeypatch
):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    phrase_id, _ = logged_calls
    member = get_user_model().objects.create_user("pat", password=PASSWORD)
    key_create("members", user=member)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{gateway.url}/login/?next=/playground/%3Flog%3D{phrase_id}")
    page.fill("input[name=username]", "pat")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{gateway.url}/playground/?log={phrase_id}")
    expect(page.get_by_test_id("banner")).to_contain_text("Only staff")
    assert PHRASE not in page.content()
    assert page.locator(".bubble").count() == 0 or page.locator(".bubble").first.inner_text() == ""
