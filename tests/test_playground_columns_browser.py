"""What the playground's model columns show and offer, in a real browser: Debian's chromium driven by Playwright,
against a gateway process, the simulator and real Redis, over loopback. Honest stats (the first-token figure the
gateway measured, live and final alike; a live token count that never passes the final one; what a cut-off answer
bills), a tool-call round trip, an image for a vision model, the phone's swipeable columns, each model's own
parameters, regenerating one column, one model's request as code, and synced scrolling. Screenshots of each state,
light and dark, land in var/test-artifacts/."""

import os
import re
import struct
import time
import zlib

import orjson
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from accounts.models import PlaygroundRun, Tier
from accounts.services import api_key_issue
from providers.models import HealthStatus, Provider
from tests.support.browser import ARTIFACTS, choose_models, send
from tests.support.data import model_create, provider_create

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-columns-check-1234"
UPSTREAM = {
    # 8 reasoning tokens then 24 answer tokens, 60 ms apart, the first after 400 ms.
    "col-thinker": "sim-echo?tokens=24&reasoning=8&ttft_ms=400&interval_ms=60",
    "col-fast": "sim-echo?tokens=20&interval_ms=40",
    "col-cut": "sim-echo?tokens=40&interval_ms=30&drop_after=12",
    "col-tools": "sim-echo?tokens=6&interval_ms=20",
    "col-seer": "sim-echo?tokens=5&interval_ms=20",
    "col-long": "sim-echo?tokens=150&interval_ms=5",
    "col-medium": "sim-echo?tokens=70&interval_ms=5",
    "col-down": "sim-echo?tokens=5",
}
PRICES = {"input_price_per_million": 3, "output_price_per_million": 15}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture
def user(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    broken = provider_create("sim-down", fresh_simulator.openai_base)
    model_create("col-thinker", [(sim, UPSTREAM["col-thinker"], 0)], **PRICES)
    model_create("col-fast", [(sim, UPSTREAM["col-fast"], 0)], **PRICES)
    model_create("col-cut", [(sim, UPSTREAM["col-cut"], 0)], **PRICES)
    model_create("col-tools", [(sim, UPSTREAM["col-tools"], 0)])
    model_create("col-seer", [(sim, UPSTREAM["col-seer"], 0)], kinds=["chat", "vision"])
    model_create("col-long", [(sim, UPSTREAM["col-long"], 0)])
    model_create("col-medium", [(sim, UPSTREAM["col-medium"], 0)])
    # Alphabetically first, so a default selection would take it: its only provider is marked down.
    model_create("aaa-down", [(broken, UPSTREAM["col-down"], 0)])
    Provider.objects.filter(pk=broken.pk).update(health_status=HealthStatus.DOWN)
    pat = get_user_model().objects.create_user("pat", password=PASSWORD)
    api_key_issue(owner=pat, tier=Tier.objects.create(name="columns", max_compare_models=3), name="pat-key")
    return pat


def login(page, base: str) -> None:
    page.goto(base + "/playground/")
    page.fill("input[name=username]", "pat")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/playground/")
    # The page's script has drawn the model picker and connected.
    expect(page.get_by_test_id("status")).to_have_text("Connected")


def column(page, model: str):
    return page.locator(f'[data-testid="column"][data-model="{model}"]')


def state_of(page, model: str) -> str:
    return column(page, model).get_attribute("data-state")


def wait_state(page, model: str, wanted: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while state_of(page, model) != wanted:
        assert time.monotonic() < deadline, (model, state_of(page, model), page.get_by_test_id("banner").inner_text())
        time.sleep(0.03)


def stats(page, model: str) -> dict:
    return page.evaluate(
        """(model) => Object.fromEntries([...document.querySelectorAll(
            `[data-testid="column"][data-model="${model}"] [data-testid^="stat-"]`)].map(
            (dd) => [dd.dataset.testid.slice(5), {text: dd.textContent, cut: dd.scrollWidth > dd.clientWidth + 1}]))""",
        model,
    )


def shots(page, name: str) -> None:
    """The page as it is, light and dark."""
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.wait_for_timeout(400)  # colours change with a short transition
        page.screenshot(path=str(ARTIFACTS / f"playground-{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")


def ms(text: str) -> float:
    """A first-token figure as the page shows it ("412 ms", "1.23 s") in milliseconds."""
    match = re.fullmatch(r"([\d,.]+) (ms|s)", text.strip())
    assert match, text
    value = float(match[1].replace(",", ""))
    return value if match[2] == "ms" else value * 1000


def tokens_out(text: str) -> int:
    match = re.search(r"~?([\d,]+) out", text)
    assert match, text
    return int(match[1].replace(",", ""))


def png(width: int, height: int, noise: bool) -> bytes:
    """A PNG of random (incompressible) or flat pixels."""
    raw = b"".join(b"\x00" + (os.urandom(width * 3) if noise else b"\x40\x80\xc0" * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


@pytest.fixture
def page(gateway, user, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, gateway.url)
    assert not errors, errors
    yield page
    context.close()
    assert not errors, errors


def test_the_live_first_token_figure_is_the_final_one_and_live_tokens_never_pass_the_final_count(page):
    # A fresh page selects two models by default, never one whose providers are all down.
    selected = [o.get_attribute("value") for o in page.get_by_test_id("model-option").all() if o.is_checked()]
    assert len(selected) == 2 and "aaa-down" not in selected, selected
    expect(page.locator('.model-option.is-down [data-testid="model-option"][value="aaa-down"]')).to_have_count(1)

    choose_models(page, ["col-thinker", "col-fast"])
    send(page, "Think first, then answer")
    live_ttft, live_tokens, live_speeds, samples = None, [], [], []
    deadline = time.monotonic() + 20
    while state_of(page, "col-thinker") != "done":
        assert time.monotonic() < deadline
        current = stats(page, "col-thinker")
        samples.append(current)
        if state_of(page, "col-thinker") == "streaming":
            if current["ttft"]["text"] not in ("…", "—"):
                # Once shown, the figure never changes.
                live_ttft = live_ttft or current["ttft"]["text"]
                assert current["ttft"]["text"] == live_ttft
            if "out" in current["tokens"]["text"]:
                live_tokens.append(tokens_out(current["tokens"]["text"]))
            live_speeds.append(current["speed"]["text"])
        time.sleep(0.02)
    final = stats(page, "col-thinker")
    assert live_ttft is not None, samples
    assert final["ttft"]["text"] == live_ttft
    # The first reasoning token, after the simulator's 400 ms wait: not the first byte, not the page's own clock.
    assert 400 <= ms(live_ttft) < 3000
    completion = tokens_out(final["tokens"]["text"])
    assert completion == 32
    assert live_tokens and max(live_tokens) <= completion and live_tokens == sorted(live_tokens), live_tokens
    assert len(set(live_tokens)) >= 5
    # No speed until enough tokens came over enough time; then an estimate, then the gateway's figure.
    assert live_speeds[0] == "…"
    assert any(speed.startswith("~") for speed in live_speeds), live_speeds
    assert re.fullmatch(r"[\d.]+ tok/s", final["speed"]["text"]), final
    assert final["cost"]["text"].startswith("$")
    wait_state(page, "col-fast", "done")
    for model in ("col-thinker", "col-fast"):
        assert not [key for key, value in stats(page, model).items() if value["cut"]], stats(page, model)
    shots(page, "columns-stats")

    # A long prompt is folded, with "Show more".
    page.get_by_test_id("new-chat").click()
    choose_models(page, ["col-fast"])
    long_prompt = "\n".join(f"Line {n} of a long prompt that goes on and on." for n in range(40))
    send(page, long_prompt)
    wait_state(page, "col-fast", "done")
    bubble = column(page, "col-fast").get_by_test_id("column-prompt")
    folded = bubble.bounding_box()["height"]
    assert folded < 200, folded
    more = column(page, "col-fast").get_by_test_id("show-more")
    expect(more).to_have_text("Show more")
    shots(page, "columns-long-prompt")
    more.click()
    expect(more).to_have_text("Show less")
    assert bubble.bounding_box()["height"] > folded * 2
    assert bubble.inner_text().strip() == long_prompt


def test_a_cut_off_answer_shows_what_its_usage_record_bills(page):
    choose_models(page, ["col-cut", "col-fast"])
    send(page, "Go on for a while")
    wait_state(page, "col-cut", "error")
    cut = stats(page, "col-cut")
    assert cut["cost"]["text"].startswith("$") and cut["cost"]["text"] != "$0", cut
    assert tokens_out(cut["tokens"]["text"]) >= 12
    assert cut["ttft"]["text"] not in ("…", "—")
    assert cut["speed"]["text"] == "—"
    wait_state(page, "col-fast", "done")
    shots(page, "columns-cut-off")


def test_a_tool_call_round_trip(page, fresh_simulator):
    tools = page.get_by_test_id("tools-json")
    tools.fill('{"name": "get weather"}')
    tools.dispatch_event("change")
    expect(page.get_by_test_id("tools-error")).to_contain_text('needs a "name" of letters')
    choose_models(page, ["col-tools", "col-fast"])
    send(page, "What is the weather in Paris?")
    expect(page.get_by_test_id("banner")).to_contain_text('needs a "name"')
    tools.fill(orjson.dumps(TOOLS).decode())
    tools.dispatch_event("change")
    expect(page.get_by_test_id("tools-error")).to_be_hidden()
    page.get_by_test_id("send").click()

    wait_state(page, "col-tools", "done")
    wait_state(page, "col-fast", "done")
    for model in ("col-tools", "col-fast"):
        call = column(page, model).get_by_test_id("tool-call")
        expect(call).to_have_count(1)
        expect(call.get_by_test_id("tool-call-name")).to_have_text("get_weather")
        assert orjson.loads(call.get_by_test_id("tool-call-args").inner_text()) == {"location": "Paris"}
    shots(page, "columns-tool-call")

    # A result typed in one column: Send takes that column's turn alone, the tool's result goes back.
    expect(page.get_by_test_id("send")).to_be_disabled()
    column(page, "col-tools").get_by_test_id("tool-result").fill('{"temperature": 21, "sky": "clear"}')
    expect(page.get_by_test_id("send")).to_be_enabled()
    page.get_by_test_id("send").click()
    wait_state(page, "col-tools", "done")
    answer = column(page, "col-tools").get_by_test_id("column-output").inner_text()
    assert len(answer.split()) == 6
    expect(column(page, "col-tools").get_by_test_id("tool-result-sent")).to_contain_text('"sky": "clear"')
    sent = fresh_simulator.requests(model=UPSTREAM["col-tools"])
    assert len(sent) == 2
    history = sent[-1]["body"]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool"]
    assert history[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert history[2] == {
        "role": "tool",
        "tool_call_id": history[1]["tool_calls"][0]["id"],
        "content": '{"temperature": 21, "sky": "clear"}',
    }
    assert sent[-1]["body"]["tools"][0]["function"]["name"] == "get_weather"
    shots(page, "columns-tool-result")

    # Reopened, the run shows the call, the result sent back and the answer, and goes on from them.
    page.reload()
    tools_column = column(page, "col-tools")
    expect(tools_column.get_by_test_id("tool-call")).to_have_count(1)
    expect(tools_column.get_by_test_id("tool-result-sent")).to_contain_text('"sky": "clear"')
    expect(tools_column.get_by_test_id("column-output")).to_have_text(answer)
    # The other column's call still waits for its result; a new prompt without it is refused with a pointer to it.
    assert len(fresh_simulator.requests(model=UPSTREAM["col-fast"])) == 1
    send(page, "And tomorrow?")
    expect(page.get_by_test_id("banner")).to_contain_text("col-fast called get_weather")
    column(page, "col-fast").get_by_test_id("tool-result").fill("sunny")
    page.get_by_test_id("send").click()
    wait_state(page, "col-tools", "done")
    wait_state(page, "col-fast", "done")
    history = fresh_simulator.requests(model=UPSTREAM["col-tools"])[-1]["body"]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user"]
    assert history[2]["content"] == '{"temperature": 21, "sky": "clear"}'
    history = fresh_simulator.requests(model=UPSTREAM["col-fast"])[-1]["body"]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "user"]
    assert history[2]["content"] == "sunny" and history[3]["content"] == "And tomorrow?"


def test_an_image_goes_to_a_vision_model(page, fresh_simulator, tmp_path):
    choose_models(page, ["col-seer", "col-fast"])
    attach = page.get_by_test_id("attach-image")
    expect(attach).to_be_disabled()
    assert "col-fast does not read images" in attach.get_attribute("title")
    choose_models(page, ["col-seer"])
    expect(attach).to_be_enabled()

    # Not an image, then an image too large even once shrunk: each gets a message that says so.
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    page.get_by_test_id("image-input").set_input_files(str(text_file))
    expect(page.get_by_test_id("banner")).to_contain_text("notes.txt is not a PNG, JPEG, WebP or GIF image")
    noise = tmp_path / "noise.png"
    noise.write_bytes(png(2048, 2048, noise=True))
    page.get_by_test_id("image-input").set_input_files(str(noise))
    expect(page.get_by_test_id("banner")).to_contain_text("noise.png is", timeout=20000)
    expect(page.get_by_test_id("banner")).to_contain_text("the limit is 1.0 MB")
    expect(page.get_by_test_id("image-preview")).to_be_hidden()

    picture = tmp_path / "picture.png"
    picture.write_bytes(png(64, 48, noise=False))
    page.get_by_test_id("image-input").set_input_files(str(picture))
    expect(page.get_by_test_id("image-preview")).to_contain_text("picture.png")
    expect(page.get_by_test_id("image-preview")).to_contain_text("64×48")
    shots(page, "columns-image-attached")
    send(page, "What is in this picture?")
    wait_state(page, "col-seer", "done")
    expect(column(page, "col-seer").get_by_test_id("turn-image")).to_have_count(1)
    expect(page.get_by_test_id("image-preview")).to_be_hidden()
    [request] = fresh_simulator.requests(model=UPSTREAM["col-seer"])
    content = request["body"]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What is in this picture?"}
    url = content[1]["image_url"]["url"]
    assert content[1]["type"] == "image_url" and url.startswith("data:image/png;base64,")
    assert len(url) > 100
    shots(page, "columns-image-sent")

    # With the image attached, a model that does not read images is named, and the send refused.
    page.get_by_test_id("image-input").set_input_files(str(picture))
    expect(page.get_by_test_id("image-preview")).to_be_visible()
    page.locator('[data-testid="model-option"][value="col-fast"]').check()
    expect(page.get_by_test_id("image-note")).to_contain_text("col-fast does not read images")
    send(page, "And this one?")
    expect(page.get_by_test_id("banner")).to_contain_text("col-fast does not read images")
    assert len(fresh_simulator.requests(model=UPSTREAM["col-seer"])) == 1


def test_the_phone_shows_columns_side_by_side_and_swipes_between_them(gateway, user, browser):
    for scheme in ("light", "dark"):
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, color_scheme=scheme
        )
        page = context.new_page()
        login(page, gateway.url)
        choose_models(page, ["col-fast", "col-tools"])
        send(page, "Hello from a phone")
        wait_state(page, "col-fast", "done")
        wait_state(page, "col-tools", "done")
        first = column(page, "col-fast").bounding_box()
        second = column(page, "col-tools").bounding_box()
        # Side by side, one per screen width: the second starts past the right edge, level with the first.
        assert abs(first["y"] - second["y"]) < 1, (first, second)
        assert 0 <= first["x"] < 20 and first["width"] > 340, first
        assert second["x"] >= 390, second
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width  # the page itself never scrolls sideways
        position = page.get_by_test_id("column-position")
        expect(position).to_contain_text("1 / 2 · col-fast")
        page.screenshot(path=str(ARTIFACTS / f"playground-phone-columns-1-{scheme}.png"), full_page=True)

        # A swipe (the columns scroll sideways and snap): the second column is in view, the indicator follows.
        box = page.locator("#columns").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 80)
        page.mouse.wheel(300, 0)
        expect(position).to_contain_text("2 / 2 · col-tools")
        deadline = time.monotonic() + 5
        while column(page, "col-tools").bounding_box()["x"] > 20:
            assert time.monotonic() < deadline, column(page, "col-tools").bounding_box()
            time.sleep(0.05)
        assert column(page, "col-fast").bounding_box()["x"] < 0
        page.screenshot(path=str(ARTIFACTS / f"playground-phone-columns-2-{scheme}.png"), full_page=True)
        # A dot takes it back.
        page.get_by_test_id("column-dot").first.click()
        expect(position).to_contain_text("1 / 2 · col-fast")
        context.close()


def test_each_model_gets_its_own_parameters(page, fresh_simulator):
    choose_models(page, ["col-fast", "col-tools"])
    page.get_by_test_id("temperature").fill("0.9")
    own = column(page, "col-tools")
    own.get_by_test_id("column-params-toggle").click()
    expect(own.get_by_test_id("model-param-temperature")).to_be_disabled()
    own.get_by_test_id("params-same").uncheck()
    own.get_by_test_id("model-param-temperature").fill("0.1")
    own.get_by_test_id("model-param-seed").fill("7")
    own.get_by_test_id("model-param-top-p").fill("3")
    own.get_by_test_id("model-param-seed").dispatch_event("change")
    send(page, "Same question, different settings")
    expect(page.get_by_test_id("banner")).to_contain_text("col-tools: Top p must be a number (0 to 1)")
    own.get_by_test_id("model-param-top-p").fill("0.5")
    own.get_by_test_id("model-param-response-format").select_option("json_object")
    own.get_by_test_id("model-param-top-p").dispatch_event("change")
    expect(own.get_by_test_id("column-params-summary")).to_contain_text("temp 0.1")
    shots(page, "columns-own-parameters")
    page.get_by_test_id("send").click()
    wait_state(page, "col-fast", "done")
    wait_state(page, "col-tools", "done")
    shared = fresh_simulator.requests(model=UPSTREAM["col-fast"])[-1]["body"]
    mine = fresh_simulator.requests(model=UPSTREAM["col-tools"])[-1]["body"]
    assert shared["temperature"] == 0.9 and "seed" not in shared and "top_p" not in shared
    assert mine["temperature"] == 0.1 and mine["seed"] == 7 and mine["top_p"] == 0.5
    assert mine["response_format"] == {"type": "json_object"}

    # One model's request as code: a chat completion with its own parameters over the shared ones.
    own.get_by_test_id("column-copy-curl").click()
    snippet = page.get_by_test_id("snippet").inner_text()
    assert "/v1/chat/completions" in snippet and '"model": "col-tools"' in snippet
    assert '"temperature": 0.1' in snippet and '"seed": 7' in snippet
    page.keyboard.press("Escape")
    own.get_by_test_id("column-copy-python").click()
    snippet = page.get_by_test_id("snippet").inner_text()
    assert 'model="col-tools"' in snippet and "seed=7" in snippet and "temperature=0.1" in snippet
    page.keyboard.press("Escape")
    page.get_by_test_id("copy-curl").click()
    snippet = page.get_by_test_id("snippet").inner_text()
    assert "/v1/compare" in snippet and '"params_by_model"' in snippet
    page.keyboard.press("Escape")


def test_regenerate_one_column_replaces_its_answer_in_the_saved_run(page, gateway, fresh_simulator, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    choose_models(page, ["col-fast", "col-tools"])
    send(page, "Tell me something")
    wait_state(page, "col-fast", "done")
    wait_state(page, "col-tools", "done")
    expect(page.get_by_test_id("status")).to_contain_text("Done in")  # the turn is saved
    before = column(page, "col-tools").get_by_test_id("column-output").inner_text()
    [first] = PlaygroundRun.objects.all()
    old_ids = {name: answer["done"]["request_id"] for name, answer in first.turns[0]["answers"].items()}
    column(page, "col-tools").get_by_test_id("column-regenerate").click()
    fresh_simulator.wait_for_requests(lambda recs: len(recs) == 2, timeout=10, model=UPSTREAM["col-tools"])
    expect(page.get_by_test_id("status")).to_contain_text("Done in")
    wait_state(page, "col-tools", "done")
    # Only that model was asked again, with the same conversation; the column still holds one turn.
    assert len(fresh_simulator.requests(model=UPSTREAM["col-fast"])) == 1
    calls = fresh_simulator.requests(model=UPSTREAM["col-tools"])
    assert len(calls) == 2 and calls[0]["body"]["messages"] == calls[1]["body"]["messages"]
    expect(column(page, "col-tools").locator(".turn:not([hidden])")).to_have_count(1)
    assert column(page, "col-tools").get_by_test_id("column-output").inner_text() == before  # the simulator repeats
    shots(page, "columns-regenerated")
    [run] = PlaygroundRun.objects.all()
    assert len(run.turns) == 1, run.turns
    answers = run.turns[0]["answers"]
    assert answers["col-tools"]["status"] == "done" and answers["col-fast"]["status"] == "done"
    # The new answer took the old one's place; the other model's answer is the one it was.
    assert answers["col-tools"]["done"]["request_id"] != old_ids["col-tools"]
    assert answers["col-fast"]["done"]["request_id"] == old_ids["col-fast"]
    expect(column(page, "col-tools").get_by_test_id("column-stats")).to_contain_text(
        answers["col-tools"]["done"]["request_id"]
    )
    page.reload()
    expect(column(page, "col-tools").locator(".turn:not([hidden])")).to_have_count(1)
    expect(column(page, "col-fast").locator(".turn:not([hidden])")).to_have_count(1)


def test_synced_scrolling(page):
    page.set_viewport_size({"width": 1280, "height": 640})
    choose_models(page, ["col-long", "col-medium"])
    for prompt in ("A long one and a shorter one", "Again"):
        send(page, prompt)
        wait_state(page, "col-long", "done")
        wait_state(page, "col-medium", "done")
    bodies = {m: column(page, m).locator(".column-body") for m in ("col-long", "col-medium")}
    assert all(body.evaluate("(el) => el.scrollHeight > el.clientHeight + 100") for body in bodies.values())
    page.get_by_test_id("sync-scroll").check()
    bodies["col-long"].evaluate("(el) => { el.scrollTop = 0; }")
    deadline = time.monotonic() + 3
    while bodies["col-medium"].evaluate("(el) => el.scrollTop") > 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Half way down one column is half way down the other, however long each is.
    bodies["col-long"].evaluate("(el) => { el.scrollTop = (el.scrollHeight - el.clientHeight) / 2; }")
    deadline = time.monotonic() + 3
    while True:
        share = bodies["col-medium"].evaluate("(el) => el.scrollTop / (el.scrollHeight - el.clientHeight)")
        if abs(share - 0.5) < 0.02:
            break
        assert time.monotonic() < deadline, share
        time.sleep(0.05)
    shots(page, "columns-synced-scroll")
    page.get_by_test_id("sync-scroll").uncheck()
    bodies["col-long"].evaluate("(el) => { el.scrollTop = 0; }")
    time.sleep(0.3)
    assert bodies["col-medium"].evaluate("(el) => el.scrollTop") > 20
