"""Debian's chromium driven by Playwright for the browser tests (never a downloaded browser)."""

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def browser():
    # A missing browser is a failure, not a skip: .ci/test-deps installs Debian's chromium.
    assert CHROMIUM.exists(), "chromium is not installed (apt-get install chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def choose_models(page, names: list[str]) -> None:
    """Select exactly `names` in the playground's model picker (one column each)."""
    for option in page.get_by_test_id("model-option").all():
        if option.get_attribute("value") not in names and option.is_checked():
            option.uncheck()
    for name in names:
        page.locator(f'[data-testid="model-option"][value="{name}"]').check()
    expect(page.get_by_test_id("column")).to_have_count(len(names))


def send(page, text: str) -> None:
    """Type `text` in the playground's prompt and send it (Enter sends; Shift+Enter would be a newline)."""
    prompt = page.get_by_test_id("prompt")
    prompt.fill(text)
    prompt.press("Enter")
