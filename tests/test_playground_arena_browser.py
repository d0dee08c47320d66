"""The playground's blind arena and shared links in a real browser: Debian's chromium driven by Playwright against a
real gateway process, the simulator and real Redis, over loopback. A battle shows "Model A" and "Model B" and no
model, provider or cost until the vote, then reveals them and stores the vote; a shared run opens for a teammate
and is a 404 for anyone else. Screenshots of each screen, light and dark, land in var/test-artifacts/."""

import re
import time

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import ArenaVote, PlaygroundRun, Team, Tier
from accounts.services import api_key_issue
from tests.support.browser import ARTIFACTS, send
from tests.support.data import model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-arena-browser-1234"
UPSTREAM = {
    "duel-north": "sim-echo?tokens=40&interval_ms=40",
    "duel-south": "sim-claude?tokens=36&interval_ms=45",
}
PROVIDERS = {"duel-north": "prov-north", "duel-south": "prov-south"}
PROMPT = "Explain blind comparisons in two sentences"
# Everything that would tell the two models apart.
SECRETS = [*UPSTREAM, *PROVIDERS.values(), "sim-echo", "sim-claude"]


@pytest.fixture
def world(fresh_simulator):
    north = provider_create("prov-north", fresh_simulator.openai_base)
    south = provider_create("prov-south", fresh_simulator.anthropic_base, dialect="anthropic")
    models = [
        model_create("duel-north", [(north, UPSTREAM["duel-north"], 0)], input_price_per_million=1),
        model_create("duel-south", [(south, UPSTREAM["duel-south"], 0)], output_price_per_million=3),
    ]
    User = get_user_model()
    pat = User.objects.create_user("pat", password=PASSWORD)
    cat = User.objects.create_user("cat", password=PASSWORD)
    ben = User.objects.create_user("ben", password=PASSWORD)
    red = Team.objects.create(name="red")
    red.members.add(pat, cat)
    Team.objects.create(name="blue").members.add(ben)
    tier = Tier.objects.create(name="arena-tier", max_compare_models=2)
    tier.allowed_models.set(models)
    api_key_issue(owner=pat, tier=tier, name="pat-key", team=red)
    return {"pat": pat, "red": red}


def login(context, base: str, username: str, path: str = "/playground/"):
    page = context.new_page()
    page.goto(base + path)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(base + path.split("?")[0])))
    return page


def states(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('[data-testid="column"]')].map(c => [
            c.dataset.model,
            {state: c.dataset.state,
             text: (c.querySelector('[data-testid="column-output"]') || {textContent: ''}).textContent}]))"""
    )


def titles(page) -> list[str]:
    """Each column's heading: its label, or its model's name once revealed."""
    return [column.get_by_role("heading").first.inner_text() for column in page.get_by_test_id("column").all()]


def wait(page, check, timeout: float = 30.0, what: str = "columns") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = states(page)
        if check(current):
            return current
        assert time.monotonic() < deadline, (what, current)
        time.sleep(0.05)


# The page without the places that list every model the key may use (the model picker, the arena's picks and the
# page's config): what is left must not tell which two models the battle drew.
BATTLE_DOM = """() => {
    const copy = document.documentElement.cloneNode(true);
    for (const node of copy.querySelectorAll(
        '[data-testid="model-picker"], [data-testid="arena-pick"], #playground-config')) node.remove();
    return copy.outerHTML;
}"""


def assert_hidden(page, frames: list[str]) -> None:
    html = page.evaluate(BATTLE_DOM)
    leaked = [secret for secret in SECRETS if secret in html]
    assert not leaked, leaked
    for frame in frames:
        assert not [secret for secret in SECRETS if secret in frame], frame


def shoot(page, name: str) -> None:
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(250)  # colour transitions
        page.screenshot(path=str(ARTIFACTS / f"{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def test_an_arena_battle_voted_and_revealed(gateway, world, browser, monkeypatch):
    # Playwright's sync API keeps an event loop on this thread; the test's ORM reads are plain blocking calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = login(context, gateway.url, "pat")
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    page.reload()  # the socket opens again, now watched
    expect(page.get_by_test_id("status")).to_contain_text("Connected")

    page.get_by_test_id("arena-toggle").check()
    expect(page.get_by_test_id("column")).to_have_count(2)
    expect(page.get_by_test_id("model-picker")).to_be_hidden()
    assert titles(page) == ["Model A", "Model B"]
    send(page, PROMPT)
    wait(page, lambda s: all(c["state"] == "streaming" and len(c["text"].split()) > 5 for c in s.values()))
    assert_hidden(page, frames)
    expect(page.get_by_test_id("vote-a")).to_be_disabled()
    done = wait(page, lambda s: all(c["state"] == "done" for c in s.values()), what="both answers done")
    assert sorted(len(c["text"].split()) for c in done.values()) == [36, 40]
    expect(page.get_by_test_id("vote-a")).to_be_enabled()
    for testid in ("vote-b", "vote-tie", "vote-bad"):
        expect(page.get_by_test_id(testid)).to_be_enabled()
    assert_hidden(page, frames)
    expect(page.get_by_test_id("history-item")).to_contain_text("Model A, Model B")
    shoot(page, "arena-before-vote")

    page.get_by_test_id("vote-a").click()
    reveal = page.get_by_test_id("arena-reveal")
    expect(reveal).to_be_visible()
    run = PlaygroundRun.objects.get(user=world["pat"])
    sides = run.turns[0]["arena"]["sides"]
    expect(page.get_by_test_id("reveal-a")).to_contain_text(sides["a"])
    expect(page.get_by_test_id("reveal-a")).to_contain_text(PROVIDERS[sides["a"]])
    expect(page.get_by_test_id("reveal-b")).to_contain_text(sides["b"])
    expect(page.get_by_test_id("reveal-b")).to_contain_text("$")
    assert titles(page) == [sides["a"], sides["b"]]
    expect(page.get_by_test_id("column").first).to_contain_text(PROVIDERS[sides["a"]])
    expect(page.get_by_test_id("vote-b")).to_be_hidden()
    expect(page.get_by_test_id("history-item")).to_contain_text(sides["a"])

    # The vote, stored with both request ids, the team, the prompt's hash and both models.
    vote = ArenaVote.objects.get()
    answers = run.turns[0]["answers"]
    assert (vote.user_id, vote.team_id, vote.run_id, vote.turn, vote.outcome) == (
        world["pat"].pk,
        world["red"].pk,
        run.pk,
        0,
        "a",
    )
    assert (vote.model_a, vote.model_b) == (sides["a"], sides["b"])
    assert vote.request_id_a == answers[sides["a"]]["request_id"] != ""
    assert vote.request_id_b == answers[sides["b"]]["request_id"] != ""
    assert len(vote.prompt_hash) == 64
    shoot(page, "arena-after-vote")

    # Reopened, the run shows the reveal; the vote cannot be cast twice.
    page.reload()
    expect(page.get_by_test_id("arena-reveal")).to_contain_text(sides["b"])
    expect(page.get_by_test_id("arena-toggle")).to_be_checked()
    assert ArenaVote.objects.count() == 1

    # Shared, the voted turn names both models.
    page.get_by_test_id("share-run").click()
    link = page.get_by_test_id("share-link")
    expect(link).to_have_value(re.compile(r"/playground/shared/"))
    page.goto(link.input_value())
    cards = page.get_by_test_id("shared-answer")
    expect(cards).to_have_count(2)
    assert [card.get_by_role("heading").inner_text() for card in cards.all()] == [sides["a"], sides["b"]]
    expect(page.get_by_test_id("shared-turn")).to_contain_text("Model A was voted better")
    shoot(page, "shared-arena-run")
    assert problems == []
    context.close()


def test_an_unvoted_battle_reopens_blind(gateway, world, browser, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = login(context, gateway.url, "pat")
    page.get_by_test_id("arena-toggle").check()
    send(page, PROMPT)
    wait(page, lambda s: all(c["state"] == "done" for c in s.values()), what="both answers done")
    page.reload()
    reopened = wait(page, lambda s: len(s) == 2 and all(c["state"] == "done" for c in s.values()), what="reopened")
    assert len(reopened) == 2 and titles(page) == ["Model A", "Model B"]
    expect(page.get_by_test_id("vote-tie")).to_be_enabled()
    assert_hidden(page, [])
    page.get_by_test_id("vote-tie").click()
    expect(page.get_by_test_id("arena-reveal")).to_be_visible()
    assert ArenaVote.objects.get().outcome == "tie"
    context.close()


def test_a_shared_link_opened_by_a_teammate_and_refused_to_an_outsider(gateway, world, browser, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = login(context, gateway.url, "pat")
    expect(page.get_by_test_id("share-run")).to_be_disabled()  # nothing saved yet
    for option in page.get_by_test_id("model-option").all():
        if option.get_attribute("value") != "duel-north" and option.is_checked():
            option.uncheck()
    send(page, PROMPT)
    wait(page, lambda s: s.get("duel-north", {}).get("state") == "done", what="the answer")
    page.get_by_test_id("share-run").click()
    link = page.get_by_test_id("share-link")
    expect(link).to_have_value(re.compile(r"/playground/shared/[\w-]{32,}/$"))
    expect(page.get_by_test_id("share-dialog")).to_contain_text("team red")
    url = link.input_value()
    run = PlaygroundRun.objects.get(user=world["pat"])
    assert url == f"{gateway.url}/playground/shared/{run.share_token}/"
    answer = run.turns[0]["answers"]["duel-north"]["text"]
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(250)
        page.get_by_test_id("share-dialog").screenshot(path=str(ARTIFACTS / f"share-dialog-{scheme}.png"))
    page.emulate_media(color_scheme="light")

    # A teammate sees the conversation, read-only.
    mate = browser.new_context(viewport={"width": 1280, "height": 860})
    mate_page = login(mate, gateway.url, "cat", path=url.removeprefix(gateway.url))
    problems = []
    mate_page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    mate_page.reload()
    expect(mate_page.get_by_test_id("shared-title")).to_have_text(PROMPT)
    expect(mate_page.get_by_test_id("shared-answer")).to_have_count(1)
    expect(mate_page.get_by_test_id("shared-answer-text")).to_have_text(answer.strip())
    expect(mate_page.get_by_test_id("shared-run")).to_contain_text("Shared by pat")
    assert mate_page.get_by_test_id("prompt").count() == 0  # no way to send from it
    assert problems == []
    shoot(mate_page, "shared-run")

    # Anyone else gets the page a link that never existed gets.
    outsider = browser.new_context(viewport={"width": 1000, "height": 700})
    out_page = outsider.new_page()
    out_page.goto(url)
    out_page.fill("input[name=username]", "ben")
    out_page.fill("input[name=password]", PASSWORD)
    with out_page.expect_response(lambda r: r.url == url) as refused:
        out_page.click("button[type=submit]")
    assert refused.value.status == 404
    expect(out_page.get_by_test_id("shared-missing")).to_be_visible()
    assert PROMPT not in out_page.content() and answer.split()[0] not in out_page.content().split("<main", 1)[1]
    shoot(out_page, "shared-run-refused")

    # Stopping the share: the teammate's link is a 404 from then on.
    page.get_by_test_id("unshare-run").click()
    expect(page.get_by_test_id("share-dialog")).to_contain_text("No longer shared")
    assert mate_page.goto(url).status == 404
    run.refresh_from_db()
    assert run.share_token is None
    for ctx in (context, mate, outsider):
        ctx.close()
