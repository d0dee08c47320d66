"""Budget threshold alerts over real loopback HTTP, with real Redis: one POST per crossing, retried with
pauses until a 2xx, never twice, refused addresses never called, and end to end through a Celery worker
and beat."""

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from accounts.alerts import (
    ALERT_MAX_ATTEMPTS,
    TOTAL_PERIOD_START,
    alert_receivers,
    budget_alerts_detect,
    budget_alerts_run,
)
from accounts.budgets import period_bounds
from accounts.models import Budget, BudgetAlert, Team, Tier, UsageRecord
from accounts.services import api_key_issue
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

HOOK_PATH = "/hooks/T0001/s3cr3t-path-token"


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request; answers `fail_first` requests with 500
    and holds each answer `delay` seconds."""

    def __init__(self, *, fail_first: int = 0, delay: float = 0.0):
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.fail_first = fail_first
        self.delay = delay
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    receiver.times.append(time.monotonic())
                    failing = len(receiver.requests) <= receiver.fail_first
                time.sleep(receiver.delay)
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(request["body"]) for request in self.requests]

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receivers():
    started = []

    def start(**options) -> Receiver:
        receiver = Receiver(**options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def alert_settings(settings):
    settings.GATEWAY_CURRENCY = "EUR"
    settings.GATEWAY_ALERT_WEBHOOK_URL = ""
    settings.GATEWAY_BUDGET_ALERT_SECONDS = 0.1
    return settings


def team_budget(webhook: str, *, amount="10", thresholds=(0.5, 0.8), period="month", name="research"):
    team = Team.objects.create(name=name, alert_webhook=webhook)
    budget = Budget.objects.create(
        scope="team", team=team, period=period, amount=Decimal(amount), soft_thresholds=list(thresholds)
    )
    return team, budget


def spend(cost: str, *, team=None, api_key=None, user=None, when: datetime | None = None) -> None:
    UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        api_key=api_key,
        user=user,
        team=team,
        model="m",
        endpoint="chat.completions",
        status_code=200,
        cost=Decimal(cost),
        created_at=when or timezone.now(),
    )


def run_until(check, *, timeout: float = 10.0) -> None:
    """Run the alerts service until `check()` holds, as beat would, but faster."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        budget_alerts_run()
        time.sleep(0.02)


def test_a_crossing_is_posted_once_with_its_exact_body(alert_settings, receivers):
    receiver = receivers()
    team, budget = team_budget(receiver.url)
    spend("4.99", team=team)
    assert budget_alerts_run().created == 0
    assert receiver.count() == 0

    spend("0.01", team=team)  # exactly half
    outcome = budget_alerts_run()
    assert (outcome.created, outcome.delivered) == (1, 1)
    assert receiver.bodies() == [
        {
            "event": "budget.threshold",
            "scope": "team",
            "name": "research",
            "period": "month",
            "threshold": 0.5,
            "spent": "5",
            "limit": "10",
            "currency": "EUR",
        }
    ]
    request = receiver.requests[0]
    assert request["path"] == HOOK_PATH
    assert request["headers"]["Content-Type"] == "application/json"
    alert = BudgetAlert.objects.get()
    assert request["headers"]["X-Gateway-Alert-Id"] == str(alert.pk)
    assert (alert.threshold, alert.spent, alert.attempts, alert.last_error) == (Decimal("0.5"), Decimal(5), 1, "")
    assert alert.delivered_at is not None
    assert alert.period_start == period_bounds("month")[0]

    for _ in range(5):
        budget_alerts_run()
    assert receiver.count() == 1

    spend("3.5", team=team)  # 8.50 of 10: past 0.8
    budget_alerts_run()
    assert receiver.count() == 2
    assert receiver.bodies()[1] == {
        "event": "budget.threshold",
        "scope": "team",
        "name": "research",
        "period": "month",
        "threshold": 0.8,
        "spent": "8.5",
        "limit": "10",
        "currency": "EUR",
    }
    budget_alerts_run()
    assert receiver.count() == 2
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [Decimal("0.5"), Decimal("0.8")]


def test_a_jump_past_two_thresholds_sends_both_and_a_new_period_alerts_again(alert_settings, receivers):
    receiver = receivers()
    team, budget = team_budget(receiver.url, period="day", thresholds=[0.8, 0.5, "junk", -1, True])
    yesterday = timezone.now() - timedelta(days=1)
    spend("9", team=team, when=yesterday)
    budget_alerts_detect(now=yesterday)
    assert BudgetAlert.objects.count() == 2  # yesterday's, never sent yet

    spend("9", team=team)
    budget_alerts_run()
    thresholds = sorted((body["threshold"], body["spent"]) for body in receiver.bodies())
    assert thresholds == [(0.5, "9"), (0.5, "9"), (0.8, "9"), (0.8, "9")]
    starts = sorted({alert.period_start for alert in BudgetAlert.objects.all()})
    assert starts == [period_bounds("day", yesterday)[0], period_bounds("day")[0]]
    assert BudgetAlert.objects.filter(delivered_at__isnull=True).count() == 0


def test_a_failing_receiver_gets_the_alert_on_the_third_attempt_and_never_twice(alert_settings, receivers):
    receiver = receivers(fail_first=2)
    team, budget = team_budget(receiver.url)
    spend("6", team=team)

    run_until(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).exists())
    alert = BudgetAlert.objects.get()
    assert alert.attempts == 3
    assert alert.last_error == ""
    assert receiver.count() == 3
    assert len({request["headers"]["X-Gateway-Alert-Id"] for request in receiver.requests}) == 1
    # Pauses grow between attempts (0.1 s, then 0.3 s here).
    first_pause = receiver.times[1] - receiver.times[0]
    second_pause = receiver.times[2] - receiver.times[1]
    assert first_pause >= 0.1 and second_pause > 1.5 * first_pause, (first_pause, second_pause)

    for _ in range(10):
        budget_alerts_run()
        time.sleep(0.05)
    assert receiver.count() == 3


def test_failures_are_recorded_and_stop_after_the_last_attempt(alert_settings, receivers, caplog):
    alert_settings.GATEWAY_BUDGET_ALERT_SECONDS = 0.02
    receiver = receivers(fail_first=100)
    team, budget = team_budget(receiver.url)
    spend("6", team=team)

    budget_alerts_run()
    alert = BudgetAlert.objects.get()
    assert (alert.attempts, alert.delivered_at) == (1, None)
    assert alert.last_error == f"http://127.0.0.1:{receiver.server.server_address[1]}: HTTP 500 Internal Server Error"

    run_until(lambda: BudgetAlert.objects.filter(attempts=ALERT_MAX_ATTEMPTS).exists())
    for _ in range(10):
        budget_alerts_run()
        time.sleep(0.05)
    assert receiver.count() == ALERT_MAX_ATTEMPTS
    assert BudgetAlert.objects.get().delivered_at is None
    assert "s3cr3t" not in caplog.text and "not delivered after 5 attempts" in caplog.text


def test_concurrent_runs_send_one_post(alert_settings, receivers):
    receiver = receivers(delay=0.3)
    team, budget = team_budget(receiver.url)
    spend("6", team=team)
    runners = 4
    barrier = threading.Barrier(runners)
    errors = []

    def run():
        try:
            barrier.wait(5)
            budget_alerts_run()
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert receiver.count() == 1
    alert = BudgetAlert.objects.get()
    assert alert.attempts == 1 and alert.delivered_at is not None


def test_a_refused_address_is_never_called(alert_settings, receivers, caplog):
    alert_settings.DEBUG = False
    alert_settings.GATEWAY_ALLOW_LOOPBACK_UPSTREAMS = False
    alert_settings.GATEWAY_BUDGET_ALERT_SECONDS = 0.02
    receiver = receivers()
    team, budget = team_budget(receiver.url)
    spend("6", team=team)

    caplog.set_level(logging.WARNING)
    run_until(lambda: BudgetAlert.objects.filter(attempts=ALERT_MAX_ATTEMPTS).exists())
    for _ in range(5):
        budget_alerts_run()
        time.sleep(0.05)
    assert receiver.count() == 0
    alert = BudgetAlert.objects.get()
    assert alert.delivered_at is None
    assert "address refused" in alert.last_error and "loopback" in alert.last_error
    assert "s3cr3t" not in alert.last_error and "s3cr3t" not in caplog.text


def test_key_budget_goes_to_the_keys_team_and_the_global_url(alert_settings, receivers):
    team_receiver, global_receiver = receivers(), receivers(fail_first=1)
    alert_settings.GATEWAY_ALERT_WEBHOOK_URL = global_receiver.url
    team = Team.objects.create(name="ops", alert_webhook=team_receiver.url)
    owner = get_user_model().objects.create_user("alice")
    key = api_key_issue(owner=owner, tier=Tier.objects.create(name="t"), name="ci-key", team=team).api_key
    Budget.objects.create(scope="key", api_key=key, period="total", amount=Decimal("2"), soft_thresholds=[1.0])
    spend("2.5", api_key=key, team=team, when=datetime(2020, 1, 1, tzinfo=UTC))

    run_until(lambda: BudgetAlert.objects.filter(delivered_at__isnull=False).exists())
    expected = {
        "event": "budget.threshold",
        "scope": "key",
        "name": "ci-key",
        "period": "total",
        "threshold": 1.0,
        "spent": "2.5",
        "limit": "2",
        "currency": "EUR",
    }
    # The team's receiver took it at once and is not sent it again while the global one is retried.
    assert team_receiver.bodies() == [expected]
    assert global_receiver.bodies() == [expected, expected]
    assert BudgetAlert.objects.get().period_start == TOTAL_PERIOD_START


def test_a_slow_receiver_leaves_the_rest_to_the_next_run(alert_settings, receivers):
    receiver = receivers(delay=0.3)
    for name in ("first", "second"):
        team, budget = team_budget(receiver.url, name=name)
        spend("6", team=team)
    first = budget_alerts_run(max_seconds=0.1)
    assert (first.created, first.delivered, receiver.count()) == (2, 1, 1)
    second = budget_alerts_run(max_seconds=0.1)
    assert (second.created, second.delivered, receiver.count()) == (0, 1, 2)
    assert sorted(body["name"] for body in receiver.bodies()) == ["first", "second"]


def test_receivers_by_scope(alert_settings):
    alert_settings.GATEWAY_ALERT_WEBHOOK_URL = "https://hooks.example.com/all"
    alice = get_user_model().objects.create_user("alice")
    for name in ("b-team", "a-team"):
        Team.objects.create(name=name, alert_webhook=f"https://hooks.example.com/{name}").members.add(alice)
    Team.objects.create(name="silent").members.add(alice)
    user_budget = Budget.objects.create(scope="user", user=alice, amount=Decimal(1))
    assert alert_receivers(user_budget) == [
        "https://hooks.example.com/a-team",
        "https://hooks.example.com/b-team",
        "https://hooks.example.com/all",
    ]
    assert alert_receivers(Budget.objects.create(scope="global", amount=Decimal(1))) == [
        "https://hooks.example.com/all"
    ]
    lone = api_key_issue(owner=alice, tier=Tier.objects.create(name="t"), name="lone").api_key
    alert_settings.GATEWAY_ALERT_WEBHOOK_URL = ""
    assert alert_receivers(Budget.objects.create(scope="key", api_key=lone, amount=Decimal(1))) == []


def test_no_receiver_is_recorded_as_the_error(alert_settings):
    team, budget = team_budget("")
    spend("6", team=team)
    budget_alerts_run()
    alert = BudgetAlert.objects.get()
    assert alert.attempts == 1
    assert alert.last_error.startswith("no alert webhook is set")


def test_disabled_budgets_and_budgets_without_thresholds_send_nothing(alert_settings, receivers):
    receiver = receivers()
    team, budget = team_budget(receiver.url)
    budget.enabled = False
    budget.save()
    Budget.objects.create(scope="team", team=team, amount=Decimal("1"), soft_thresholds=[])
    spend("60", team=team)
    budget_alerts_run()
    assert receiver.count() == 0
    assert not BudgetAlert.objects.exists()


def test_beat_runs_the_alerts_in_a_worker(alert_settings, receivers, celery_worker):
    receiver = receivers()
    team, budget = team_budget(receiver.url)
    spend("5", team=team)
    # At INFO, so a library that logged the webhook's URL would show it below.
    worker = celery_worker(beat=True, loglevel="info", extra_env={"GATEWAY_BUDGET_ALERT_SECONDS": "0.3"})

    eventually(lambda: receiver.count() >= 1, timeout=30, what="the first alert")
    time.sleep(1.5)  # several more beat runs
    assert [body["threshold"] for body in receiver.bodies()] == [0.5]
    assert receiver.bodies()[0]["spent"] == "5"

    spend("3", team=team)
    eventually(lambda: receiver.count() >= 2, timeout=30, what="the second alert")
    time.sleep(1.5)
    assert [body["threshold"] for body in receiver.bodies()] == [0.5, 0.8]
    assert BudgetAlert.objects.filter(delivered_at__isnull=False, attempts=1).count() == 2
    assert "accounts.tasks.budget_alerts" in worker.log()
    assert "s3cr3t" not in worker.log()
