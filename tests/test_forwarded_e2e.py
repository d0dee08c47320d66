"""Client addresses behind a proxy: the production server (`manage.py run_gateway`) believes X-Forwarded-For
from the peers in FORWARDED_ALLOW_IPS only. Behind a trusted proxy, five bad passwords lock that client's
address alone (another client through the same proxy still logs in); from any other peer the header is
ignored, so it cannot dodge a lock by naming a new address each time."""

import re
import subprocess
import sys

import httpx
import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model

from tests.support.gateway import ROOT, gateway_env
from tests.support.ports import free_port, stop_process, wait_http

pytestmark = pytest.mark.django_db(transaction=True)

PROXY = "127.0.0.2"  # a proxy on loopback; the test's own connections come from 127.0.0.1, which is not trusted
PASSWORD = "correct-horse-battery-9"
WRONG = "wrong-password-0"
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _browser(base: str, *, via: str, client_address: str | None = None) -> httpx.Client:
    """One browser's cookie jar, connecting from `via` (a proxy or itself), with the X-Forwarded-For a proxy
    would set for `client_address`."""
    headers = {"X-Forwarded-For": client_address} if client_address else {}
    return httpx.Client(base_url=base, headers=headers, transport=httpx.HTTPTransport(local_address=via), timeout=30)


def _login(browser: httpx.Client, password: str) -> int:
    page = browser.get("/login/")
    token = CSRF.search(page.text)[1]
    answer = browser.post("/login/", data={"username": "ops", "password": password, "csrfmiddlewaretoken": token})
    return answer.status_code


def _attempt_addresses() -> set[str]:
    """The client addresses axes counted failed logins of "ops" for, each at least once."""
    rows = AccessAttempt.objects.filter(username="ops", failures_since_start__gte=1)
    return set(rows.values_list("ip_address", flat=True))


def test_lockouts_follow_the_client_address_behind_a_trusted_proxy_only(redis_server, tmp_path):
    get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "manage.py", "run_gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = gateway_env(redis_server, FORWARDED_ALLOW_IPS=f"{PROXY}, 10.20.0.0/16")
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(base + "/health", timeout=30, process=process)

        # Through the trusted proxy: five failures of one client lock that client, and only it.
        with _browser(base, via=PROXY, client_address="203.0.113.7") as alice:
            statuses = [_login(alice, WRONG) for _ in range(5)]
            assert statuses == [200, 200, 200, 200, 429], statuses
            assert _login(alice, PASSWORD) == 429
        with _browser(base, via=PROXY, client_address="198.51.100.9") as bob:
            assert _login(bob, PASSWORD) == 302
        assert _attempt_addresses() == {"203.0.113.7"}

        # A chain of proxies: the address the trusted one received the request from is the client's.
        with _browser(base, via=PROXY, client_address="192.0.2.10, 10.20.3.4") as carol:
            assert _login(carol, WRONG) == 200
        assert _attempt_addresses() == {"203.0.113.7", "192.0.2.10"}

        # Straight from an untrusted peer, X-Forwarded-For is ignored: the lock is on the peer's own address,
        # and naming another address in the header does not lift it.
        with _browser(base, via="127.0.0.1", client_address="192.0.2.55") as mallory:
            statuses = [_login(mallory, WRONG) for _ in range(5)]
            assert statuses == [200, 200, 200, 200, 429], statuses
        with _browser(base, via="127.0.0.1", client_address="192.0.2.56") as mallory_again:
            assert _login(mallory_again, PASSWORD) == 429
        assert _attempt_addresses() == {"203.0.113.7", "192.0.2.10", "127.0.0.1"}
    finally:
        stop_process(process)
    log_text = log_path.read_text(errors="replace")
    assert f"proxies trusted {PROXY},10.20.0.0/16" in log_text, log_text[-2000:]
    assert "Traceback" not in log_text, log_text[-3000:]
