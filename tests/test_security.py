"""Security at the edges: login throttling and CSRF on the login forms, security headers and the
Content-Security-Policy on every page (admin JavaScript still working under it, in a real browser),
`nosniff` on API responses streamed or not, cookies, and key expiry over a real gateway process."""

import logging
import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright

from accounts import auth
from accounts.keys import key_generate
from accounts.models import ApiKey, Tier
from accounts.services import api_key_issue, service_user_get_or_create
from tests.support.data import key_create, model_create, provider_create

PASSWORD = "correct-horse-battery-9"
WRONG = "wrong-password-0"
LOGIN_PAGES = ["/login/", "/admin/login/"]
CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fast_password_hashing(settings):
    # Only for tests in this process: a gateway process checks passwords with the default hashers.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(db, fast_password_hashing):
    return get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)


def login_post(client: Client, url: str, password: str, *, username: str = "ops", address: str = "10.1.2.3"):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_the_sixth_attempt_is_refused_even_with_the_right_password(staff, url):
    client = Client()
    for _ in range(4):
        response = login_post(client, url, WRONG)
        assert response.status_code == 200  # the form again, with its error
        assert "_auth_user_id" not in client.session
    fifth = login_post(client, url, WRONG)  # the fifth failure locks
    assert fifth.status_code == 429
    refused = login_post(client, url, PASSWORD)
    assert refused.status_code == 429
    assert "Too many sign-in attempts" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    assert "content-security-policy" in refused.headers

    # Another address, or another username from this one, is not locked.
    assert login_post(Client(), url, PASSWORD, address="10.9.9.9").status_code == 302
    get_user_model().objects.create_user("other", password=PASSWORD, is_staff=True)
    assert login_post(Client(), url, PASSWORD, username="other").status_code == 302


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_a_good_login_before_the_limit_works_and_resets_the_count(staff, url):
    client = Client()
    for _ in range(4):
        assert login_post(client, url, WRONG).status_code == 200
    assert login_post(client, url, PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(staff.pk)
    client = Client()
    for attempt in range(5):
        assert login_post(client, url, WRONG).status_code == (200 if attempt < 4 else 429)
    assert login_post(client, url, PASSWORD).status_code == 429


def test_the_limit_and_cool_off_come_from_settings(staff, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    client = Client()
    assert login_post(client, "/login/", WRONG).status_code == 200
    assert login_post(client, "/login/", WRONG).status_code == 429
    assert login_post(client, "/login/", PASSWORD).status_code == 429
    time.sleep(1.2)
    assert login_post(client, "/login/", PASSWORD).status_code == 302


@pytest.mark.parametrize("url", LOGIN_PAGES)
def test_a_login_post_without_the_csrf_token_is_refused(staff, url):
    client = Client(enforce_csrf_checks=True)
    response = client.post(url, {"username": "ops", "password": PASSWORD})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session
    page = client.get(url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    assert client.post(url, {"username": "ops", "password": PASSWORD, "csrfmiddlewaretoken": token}).status_code == 302


def test_session_and_csrf_cookies_are_http_only_and_same_site(staff):
    client = Client()
    client.get("/login/")
    csrf = client.cookies["csrftoken"]
    assert csrf["httponly"] and csrf["samesite"] == "Lax"
    login_post(client, "/login/", PASSWORD)
    session = client.cookies["sessionid"]
    assert session["httponly"] and session["samesite"] == "Lax"


def site_pages(staff) -> list[str]:
    tier = Tier.objects.create(name="pages")
    issued = api_key_issue(owner=staff, tier=tier, name="pages-key")
    provider = provider_create("pages-provider", "https://pages.example.com/v1")
    urls = ["/admin/", "/admin/dashboard/", "/admin/providers/routerule/test/", "/playground/"]
    for name in ("accounts_apikey", "accounts_tier", "accounts_usagerecord", "providers_provider", "providers_model"):
        urls.append(reverse(f"admin:{name}_changelist"))
    for name in ("accounts_apikey", "accounts_tier", "providers_provider"):
        urls.append(reverse(f"admin:{name}_add"))
    urls.append(reverse("admin:accounts_apikey_change", args=[issued.api_key.pk]))
    urls.append(reverse("admin:providers_provider_change", args=[provider.pk]))
    return urls


def assert_page_headers(response, url: str) -> None:
    csp = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, url
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp, url
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, url
    assert response.headers["x-content-type-options"] == "nosniff", url
    assert response.headers["x-frame-options"] == "DENY", url
    assert response.headers["referrer-policy"] == "same-origin", url
    assert response.headers["cross-origin-opener-policy"] == "same-origin", url


def test_every_html_page_carries_the_security_headers(staff):
    client = Client()
    for url in LOGIN_PAGES:
        response = client.get(url)
        assert response.status_code == 200
        assert_page_headers(response, url)
    client.force_login(staff)
    for url in site_pages(staff):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["content-type"].startswith("text/html"), url
        assert_page_headers(response, url)
    # The playground keeps its own, stricter policy with the websocket it needs.
    assert "connect-src 'self' ws://testserver" in client.get("/playground/")["content-security-policy"]


def test_admin_templates_hold_no_inline_script_or_style(staff):
    client = Client()
    client.force_login(staff)
    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\sstyle=\"|\son[a-z]+=\"", re.I)
    for url in site_pages(staff):
        html = client.get(url).content.decode()
        # JSON data blocks are not executed and are allowed.
        found = [m for m in inline.findall(html) if "application/json" not in m]
        assert not found, (url, found)


async def test_the_site_middleware_stack_runs_async_without_adapters(caplog, staff):
    caplog.set_level(logging.DEBUG, logger="django.request")
    ASGIHandler()  # builds the middleware chain for async requests
    response = await AsyncClient().get("/login/")
    assert response.status_code == 200
    assert "content-security-policy" in response.headers
    adapted = [r.getMessage() for r in caplog.records if "adapted for middleware" in r.getMessage()]
    assert adapted == []


@pytest.mark.django_db(transaction=True)
def test_login_throttling_over_a_real_asgi_gateway(gateway_factory):
    get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True)
    gateway = gateway_factory()

    def login_form(client: httpx.Client) -> dict:
        page = client.get("/admin/login/")
        assert page.status_code == 200
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return {"username": "ops", "csrfmiddlewaretoken": token, "next": "/admin/"}

    with httpx.Client(base_url=gateway.url) as client:
        form = login_form(client)
        for _ in range(4):
            assert client.post("/admin/login/", data={**form, "password": WRONG}).status_code == 200
        good = client.post("/admin/login/", data={**form, "password": PASSWORD})
        assert good.status_code == 302 and good.headers["location"] == "/admin/"
        assert client.get("/admin/").status_code == 200

    with httpx.Client(base_url=gateway.url) as client:
        form = login_form(client)
        for attempt in range(5):
            failed = client.post("/admin/login/", data={**form, "password": WRONG})
            assert failed.status_code == (200 if attempt < 4 else 429)
        refused = client.post("/admin/login/", data={**form, "password": PASSWORD})
        assert refused.status_code == 429
        assert "Too many sign-in attempts" in refused.text
        assert client.get("/admin/").status_code == 302  # still not logged in


def chat_body(model: str, stream: bool) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "headers"}]}


@pytest.mark.django_db(transaction=True)
def test_api_responses_carry_nosniff_streamed_or_not_and_streams_are_not_buffered(gateway_factory, fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    model_create("sec-fast", [(sim, "sim-echo", 0)])
    model_create("sec-drip", [(sim, "sim-echo?tokens=12&interval_ms=100", 0)])
    key = key_create("sec")
    gateway = gateway_factory()
    auth = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        responses = [
            client.get("/health"),
            client.get("/v1/models"),  # 401
            client.get("/v1/models", headers=auth),
            client.get("/v1/no-such-thing", headers=auth),
            client.post("/v1/chat/completions", json=chat_body("sec-fast", False), headers=auth),
            client.post("/v1/chat/completions", content=b"{not json", headers=auth),
            client.get("/api/v1/usage", headers=auth),
            client.get("/static/admin/js/core.js"),
        ]
        assert [r.status_code for r in responses] == [200, 401, 200, 404, 200, 400, 200, 200]
        for response in responses:
            assert response.headers["x-content-type-options"] == "nosniff", response.request.url

        started = time.monotonic()
        arrivals = []
        with client.stream("POST", "/v1/chat/completions", json=chat_body("sec-drip", True), headers=auth) as stream:
            assert stream.status_code == 200
            assert stream.headers["x-content-type-options"] == "nosniff"
            assert stream.headers["content-type"].startswith("text/event-stream")
            for chunk in stream.iter_raw():
                if chunk.strip():
                    arrivals.append(time.monotonic() - started)
    # Events arrive as the upstream produces them, about 100 ms apart, not all at the end.
    assert len(arrivals) >= 6
    assert arrivals[-1] - arrivals[0] > 0.6


@pytest.mark.django_db(transaction=True)
def test_expired_keys_get_401_at_the_edge_even_when_cached(gateway_factory):
    # The gateway first: its start may take longer than the 3 s the key has (a loaded machine).
    gateway = gateway_factory(GATEWAY_KEY_CACHE_SECONDS="60")
    tier = Tier.objects.create(name="expiry")
    owner = service_user_get_or_create()
    past = api_key_issue(owner=owner, tier=tier, name="past", expires_at=timezone.now() - timedelta(seconds=1))
    soon = api_key_issue(owner=owner, tier=tier, name="soon", expires_at=timezone.now() + timedelta(seconds=3))
    later = api_key_issue(owner=owner, tier=tier, name="later")

    def status(key: str) -> int:
        return httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code

    assert status(past.plaintext) == 401
    assert status(soon.plaintext) == 200  # now cached for 60 s
    assert status(later.plaintext) == 200
    time.sleep(max(0.0, (soon.api_key.expires_at - timezone.now()).total_seconds()) + 0.3)
    assert status(soon.plaintext) == 401
    assert status(later.plaintext) == 200

    # An expiry set on a key in use (admin saves it) applies within the config check.
    key = ApiKey.objects.get(pk=later.api_key.pk)
    key.expires_at = timezone.now() - timedelta(seconds=1)
    key.save(update_fields=["expires_at"])
    deadline = time.monotonic() + 5
    while status(later.plaintext) != 401:
        assert time.monotonic() < deadline, "an expired key still worked after 5 s"
        time.sleep(0.1)


@pytest.mark.django_db(transaction=True)
def test_admin_javascript_runs_under_the_csp_in_a_real_browser(gateway_factory):
    assert CHROMIUM.exists(), "chromium is not installed (apt-get install chromium)"
    get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)
    provider = provider_create("browser-provider", "https://browser.example.com/v1")
    api_key_issue(owner=service_user_get_or_create(), tier=Tier.objects.create(name="browser-tier"), name="browser")
    gateway = gateway_factory()
    violations: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.goto(gateway.url + "/admin/login/")
        page.fill("input[name=username]", "ops")
        page.fill("input[name=password]", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(gateway.url + "/admin/")
        for path in (
            "/admin/",
            "/admin/dashboard/",
            "/admin/accounts/apikey/",
            "/admin/accounts/apikey/add/",
            "/admin/accounts/tier/add/",
            f"/admin/providers/provider/{provider.pk}/change/",
            "/admin/providers/routerule/test/",
        ):
            page.goto(gateway.url + path)
            page.wait_for_load_state("load")
        # Admin scripts ran: the changelist's select-all box, the tier form's two-pane model picker.
        page.goto(gateway.url + "/admin/accounts/apikey/")
        page.click("#action-toggle")
        expect(page.locator(".action-counter")).to_have_text("1 of 1 selected")
        page.goto(gateway.url + "/admin/accounts/tier/add/")
        page.wait_for_selector("#id_allowed_models_from", timeout=5000)
        # Styles from the gateway's own static files applied (the dashboard's cards are flex boxes).
        page.goto(gateway.url + "/admin/dashboard/")
        display = page.evaluate(
            "() => { const e = document.querySelector('.gw-cards'); return e && getComputedStyle(e).display; }"
        )
        browser.close()
    assert display == "flex"
    assert violations == []


def test_production_settings_make_cookies_secure_and_keep_the_security_block(tmp_path):
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.SESSION_COOKIE_SAMESITE, "
        "s.SECURE_HSTS_SECONDS > 0, s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME, s.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS, "
        "s.MIDDLEWARE[-1])"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aigateway.settings",
        "DJANGO_DEBUG": "False",
        "DJANGO_SECRET_KEY": "production-like-secret-key-for-the-settings-check-0123456789",
        "GATEWAY_LOGIN_FAILURE_LIMIT": "3",
        "GATEWAY_LOGIN_COOLOFF_MINUTES": "30",
        "GATEWAY_ALLOW_LOOPBACK_UPSTREAMS": "False",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [
        "True", "True", "True", "Lax", "True", "3", "0.5", "False", "axes.middleware.AxesMiddleware"
    ]  # fmt: skip


@pytest.mark.django_db
def test_a_flood_of_made_up_keys_cannot_grow_the_key_cache_without_bound(monkeypatch):
    monkeypatch.setattr(auth, "CACHE_MAX_ENTRIES", 50)
    auth._cache_reset()
    real = key_create("flood")
    for _ in range(120):
        assert auth.key_context_resolve_sync(key_generate()) is None
        assert len(auth._cache) <= 50
    assert auth.key_context_resolve_sync(real) is not None
