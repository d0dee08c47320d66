"""The audit trail in a real browser (Debian's chromium driven by Playwright) against a gateway process: log into
admin, change a provider's base URL, read timeout and API key on its page, then find the change on the provider's
History page and in the audit list, by whom, with the old and new values, and the API key reading "changed"
without its value or ciphertext. Screenshots land in var/test-artifacts/."""

import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from providers.models import Provider
from tests.support.browser import ARTIFACTS
from tests.support.data import provider_create

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-audit-browser-7d2c9e14"
UPSTREAM_OLD = "sk-upstream-browser-old-3e8a1f6b2c"
UPSTREAM_NEW = "sk-upstream-browser-new-9b4d0c7a5e"


def changes_row(scope, field: str):
    """The before/after row of one field in an entry's changes table (Field, From, To)."""
    return scope.locator("tr", has=scope.page.locator("td", has_text=re.compile(f"^{re.escape(field)}$")))


def test_an_admin_change_of_a_provider_is_seen_with_before_and_after(gateway, browser, monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    get_user_model().objects.create_superuser("ops", email="ops@example.com", password=PASSWORD)
    provider = provider_create("audited", "https://old.example.com/v1", api_key=UPSTREAM_OLD, timeout_read=120)
    old_ciphertext = provider.api_key_encrypted

    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.goto(gateway.url + "/admin/login/?next=/admin/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(gateway.url + "/admin/")

    change_url = f"{gateway.url}/admin/providers/provider/{provider.pk}/change/"
    page.goto(change_url)
    page.fill("#id_base_url", "https://new.example.com/v1")
    page.fill("#id_timeout_read", "45")
    page.fill("#id_api_key", UPSTREAM_NEW)
    page.click("input[name=_save]")
    expect(page).to_have_url(re.compile(r"/admin/providers/provider/$"))
    provider.refresh_from_db()
    assert (provider.base_url, provider.timeout_read, provider.api_key) == (
        "https://new.example.com/v1",
        45,
        UPSTREAM_NEW,
    )

    # The History button of the provider's page opens its audit trail, newest first.
    page.goto(change_url)
    page.get_by_role("link", name="History").click()
    expect(page).to_have_url(f"{gateway.url}/admin/providers/provider/{provider.pk}/history/")
    entries = page.get_by_test_id("audit-entry")
    expect(entries).to_have_count(2)  # created (in code, before the test), then changed by ops
    change = entries.first
    expect(change.get_by_test_id("audit-who")).to_have_text("ops")
    expect(change.get_by_test_id("audit-action")).to_have_text("update")
    expect(entries.nth(1).get_by_test_id("audit-action")).to_have_text("create")
    changes = change.get_by_test_id("audit-changes")
    expect(changes_row(changes, "Base url").locator("td")).to_have_text(
        ["2", "Base url", "https://old.example.com/v1", "https://new.example.com/v1"]
    )
    expect(changes_row(changes, "Timeout read").locator("td")).to_have_text(["3", "Timeout read", "120.0", "45.0"])
    expect(changes_row(changes, "API key").locator("td")).to_have_text(["1", "API key", "changed", "changed"])
    page.screenshot(path=str(ARTIFACTS / "admin-audit-history.png"), full_page=True)
    html = page.content()
    for secret in (UPSTREAM_OLD, UPSTREAM_NEW, old_ciphertext, provider.api_key_encrypted):
        assert secret not in html

    # The same entry in the audit list of every change, and its page.
    page.get_by_test_id("audit-list-link").click()
    expect(page).to_have_url(f"{gateway.url}/admin/auditlog/logentry/")
    row = page.locator("#result_list tbody tr", has_text="providers | provider - audited").filter(has_text="update")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("ops")
    expect(row).to_contain_text("3 changes:")
    expect(page.locator("select[name=action] option[value=delete_selected]")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "admin-audit-list.png"), full_page=True)
    row.locator("th a, td a").first.click()
    expect(page).to_have_url(re.compile(r"/admin/auditlog/logentry/\d+/change/$"))
    expect(page.locator("input[type=submit]")).to_have_count(0)  # read-only: nothing to save or delete
    detail = page.locator("#content-main")
    expect(changes_row(detail, "Base url").locator("td")).to_have_text(
        ["2", "Base url", "https://old.example.com/v1", "https://new.example.com/v1"]
    )
    expect(changes_row(detail, "API key").locator("td")).to_have_text(["1", "API key", "changed", "changed"])
    page.screenshot(path=str(ARTIFACTS / "admin-audit-entry.png"), full_page=True)
    html = page.content()
    for secret in (UPSTREAM_OLD, UPSTREAM_NEW, old_ciphertext, provider.api_key_encrypted):
        assert secret not in html
    assert Provider.objects.get(pk=provider.pk).api_key == UPSTREAM_NEW
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
