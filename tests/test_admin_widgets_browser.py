"""The admin's row editors in a real browser (Debian's chromium driven by Playwright) against a gateway
process: add an alias row and a transform row, see a bad row refused beside it before anything is sent,
move a row, save, and find the JSON the rows stand for in the database. Screenshots land in
var/test-artifacts/."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from providers.models import Model, Provider
from tests.support.browser import ARTIFACTS

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-admin-rows-check-2468"


@pytest.fixture
def routing():
    get_user_model().objects.create_superuser("ops", email="ops@example.com", password=PASSWORD)
    Model.objects.create(name="rows-backup")
    main = Model.objects.create(name="rows-main", aliases=["rows-old"])
    provider = Provider.objects.create(
        name="rows-acme",
        base_url="https://api.example.com/v1",
        request_transforms=[{"op": "drop", "path": "metadata.user_id"}],
    )
    return {"model": main, "provider": provider}


def widget(page, field: str):
    return page.get_by_test_id(f"{field}-widget")


def test_rows_are_added_checked_moved_and_saved(gateway, routing, browser, monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    console_errors, failed = [], []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    # Every asset the pages load is served (the browser's own favicon request aside).
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 and "favicon" not in r.url else None)
    page.goto(gateway.url + "/admin/login/?next=/admin/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(gateway.url + "/admin/")

    # The model: one stored alias, no blank rows once the script runs, an Add button instead.
    model_url = f"{gateway.url}/admin/providers/model/{routing['model'].pk}/change/"
    page.goto(model_url)
    aliases = widget(page, "aliases")
    expect(aliases.get_by_test_id("aliases-item")).to_have_count(1)
    expect(aliases.get_by_test_id("aliases-item")).to_have_value("rows-old")
    aliases.get_by_test_id("aliases-add").click()
    new_alias = aliases.get_by_test_id("aliases-item").nth(1)
    expect(new_alias).to_be_focused()
    new_alias.fill("rows-main-*")

    # A pattern where only a model name may go is shown beside its row, and the form is not sent.
    fallbacks = widget(page, "fallbacks")
    fallbacks.get_by_test_id("fallbacks-add").click()
    fallbacks.get_by_test_id("fallbacks-item").fill("rows-back*")
    fallbacks.get_by_test_id("fallbacks-item").press("Tab")
    expect(fallbacks.get_by_test_id("row-errors")).to_have_text(
        "fallback 1: 'rows-back*' is a pattern; only a model name can go here"
    )
    page.click("input[name=_continue]")
    expect(page).to_have_url(model_url)
    assert Model.objects.get(pk=routing["model"].pk).aliases == ["rows-old"]
    fallbacks.get_by_test_id("fallbacks-item").fill("rows-backup")
    expect(fallbacks.get_by_test_id("row-errors")).to_have_text("")
    page.get_by_label("embeddings").check()
    page.screenshot(path=str(ARTIFACTS / "admin-model-rows.png"), full_page=True)
    page.click("input[name=_save]")
    expect(page).to_have_url(gateway.url + "/admin/providers/model/")
    saved = Model.objects.get(pk=routing["model"].pk)
    assert (saved.aliases, saved.fallbacks, saved.kinds) == (
        ["rows-old", "rows-main-*"],
        ["rows-backup"],
        ["chat", "embeddings"],
    )

    # The provider: a cap row shows only the inputs a cap takes and refuses a max that is no number.
    provider_url = f"{gateway.url}/admin/providers/provider/{routing['provider'].pk}/change/"
    page.goto(provider_url)
    transforms = widget(page, "request_transforms")
    rows = transforms.get_by_test_id("request_transforms-row")
    expect(rows).to_have_count(1)
    transforms.get_by_test_id("request_transforms-add").click()
    cap = rows.nth(1)
    cap.get_by_test_id("request_transforms-op").select_option("cap")
    expect(cap.get_by_test_id("request_transforms-to")).to_be_hidden()
    expect(cap.get_by_test_id("request_transforms-name")).to_be_hidden()
    expect(cap.get_by_test_id("request_transforms-value")).to_be_hidden()
    cap.get_by_test_id("request_transforms-path").fill("max_tokens")
    cap.get_by_test_id("request_transforms-max").fill("lots")
    expect(cap.get_by_test_id("row-errors")).to_have_text("transform 2: 'max' must be a number, not 'lots'")
    cap.get_by_test_id("request_transforms-max").fill("4096")
    expect(cap.get_by_test_id("row-errors")).to_have_text("")

    # A header row, moved to the top.
    transforms.get_by_test_id("request_transforms-add").click()
    header = rows.nth(2)
    header.get_by_test_id("request_transforms-op").select_option("header")
    expect(header.get_by_test_id("request_transforms-path")).to_be_hidden()
    header.get_by_test_id("request_transforms-name").fill("X-Team")
    header.get_by_test_id("request_transforms-value").fill("ml")
    header.get_by_role("button", name="Move transform up").click()
    rows.nth(1).get_by_role("button", name="Move transform up").click()  # locators are positions: it is 2nd now
    expect(rows.nth(0).get_by_test_id("request_transforms-name")).to_have_value("X-Team")
    page.screenshot(path=str(ARTIFACTS / "admin-provider-transforms.png"), full_page=True)
    page.click("input[name=_save]")
    expect(page).to_have_url(gateway.url + "/admin/providers/provider/")
    assert Provider.objects.get(pk=routing["provider"].pk).request_transforms == [
        {"op": "header", "name": "X-Team", "value": "ml"},
        {"op": "drop", "path": "metadata.user_id"},
        {"op": "cap", "path": "max_tokens", "max": 4096},
    ]
    assert failed == []
    assert not [e for e in console_errors if "Not Found" not in e], console_errors
