"""Budget threshold alerts: when a budget's spend in its current period reaches one of its soft thresholds
(fractions of its amount), a JSON event is POSTed to the team's alert webhook and GATEWAY_ALERT_WEBHOOK_URL.

The `budget_alerts` Celery task runs this every GATEWAY_BUDGET_ALERT_SECONDS, never the request path.
Once per crossing rests on the BudgetAlert row: its unique (budget, period start, threshold) lets exactly one
process record a crossing, whichever notices it first. Sending is one attempt at a time per alert (a Redis
hold taken before the POST, which after a failure becomes the pause before the next attempt: the alert
interval times 1, 3, 9, 27), at most ALERT_MAX_ATTEMPTS attempts, each counted on the row with its error.
A receiver that answered 2xx is not sent the alert again when another receiver of it is retried; every
attempt carries the same X-Gateway-Alert-Id, so a receiver can drop the rare repeat of a delivery whose
answer was lost.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

import httpx
import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.budgets import budget_spent_db, period_bounds
from accounts.models import Budget, BudgetAlert
from aigateway.redis import redis_sync
from providers.upstream import upstream_blocking, upstream_fetch
from providers.upstream_policy import AddressRefused

logger = logging.getLogger(__name__)

ALERT_EVENT = "budget.threshold"
ALERT_MAX_ATTEMPTS = 5
# A "total" budget has no period, but an alert row needs a start: the same fixed one for all of them.
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)
# While held, an alert is being sent (the hold outlives any one attempt: see WEBHOOK_TIMEOUT) or waits
# for its next attempt.
ALERT_HOLD_KEY = "gw:budget-alert:{alert_id}:hold"
# Receivers (by a hash of their URL, never the URL: it is often a secret) that took the alert already.
ALERT_SENT_KEY = "gw:budget-alert:{alert_id}:sent"
_SENDING_HOLD_SECONDS = 120
_SENT_KEEP_SECONDS = 40 * 86400
_RETRY_FACTOR = 3
_RETRY_MAX_SECONDS = 3600
WEBHOOK_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
_THRESHOLD_UNIT = Decimal("0.0001")  # BudgetAlert.threshold's precision
_THRESHOLD_MAX = Decimal("99.9999")
_ERROR_MAX_CHARS = 255
_BATCH = 200


@dataclass(frozen=True, slots=True)
class AlertsOutcome:
    created: int
    delivered: int
    failed: int


def budget_alerts_run(*, now: datetime | None = None, max_seconds: float = 30.0) -> AlertsOutcome:
    """Record the thresholds crossed since the last run, then send the alerts that are due; no new attempt
    starts after `max_seconds` (receivers that time out must not hold the worker: the next run goes on)."""
    started = time.monotonic()
    created = budget_alerts_detect(now=now)
    delivered = failed = 0
    for alert in budget_alerts_due():
        if time.monotonic() - started > max_seconds:
            break
        outcome = budget_alert_deliver(alert=alert)
        delivered += outcome is True
        failed += outcome is False
    return AlertsOutcome(created=len(created), delivered=delivered, failed=failed)


def _spent(budget: Budget, now: datetime) -> Decimal:
    # The budget's spend in the period containing `now`, as the database records it.
    return budget_spent_db(budget, now)


def soft_thresholds(raw) -> list[Decimal]:
    """A budget's soft thresholds as BudgetAlert stores them; anything that is not a positive number is left out."""
    if not isinstance(raw, list):
        return []
    found = set()
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        try:
            threshold = Decimal(str(value)).quantize(_THRESHOLD_UNIT)
        except InvalidOperation:
            continue
        if Decimal(0) < threshold <= _THRESHOLD_MAX:
            found.add(threshold)
    return sorted(found)


def budget_alerts_detect(*, now: datetime | None = None) -> list[BudgetAlert]:
    """A BudgetAlert row for each soft threshold an enabled budget's current-period spend has reached and
    no row records yet; returns the rows this call created (another process may have created others)."""
    now = now or timezone.now()
    created = []
    for budget in Budget.objects.filter(enabled=True).order_by("pk"):
        thresholds = soft_thresholds(budget.soft_thresholds)
        if not thresholds:
            continue
        spent = _spent(budget, now)
        reached = [threshold for threshold in thresholds if spent > 0 and spent >= threshold * budget.amount]
        if not reached:
            continue
        period_start = period_bounds(budget.period, now)[0] or TOTAL_PERIOD_START
        recorded = set(
            BudgetAlert.objects.filter(budget=budget, period_start=period_start).values_list("threshold", flat=True)
        )
        for threshold in reached:
            if threshold in recorded:
                continue
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        budget=budget, period_start=period_start, threshold=threshold, spent=spent
                    )
            except IntegrityError:
                continue  # another run recorded this crossing first: it sends it
            created.append(alert)
    return created


def budget_alerts_due():
    """Alerts not delivered that have attempts left, oldest first (whether one is due is its hold's say)."""
    return (
        BudgetAlert.objects.filter(delivered_at__isnull=True, attempts__lt=ALERT_MAX_ATTEMPTS)
        .select_related("budget__team", "budget__api_key__team", "budget__user")
        .order_by("created_at", "pk")[:_BATCH]
    )


def alert_receivers(budget: Budget) -> list[str]:
    """Where a budget's alerts go: its team's webhook (a key's team for a key budget, the user's teams for a
    user budget), then GATEWAY_ALERT_WEBHOOK_URL; each URL once."""
    urls = []
    if budget.scope == "team" and budget.team_id:
        urls.append(budget.team.alert_webhook)
    elif budget.scope == "key" and budget.api_key_id and budget.api_key.team_id:
        urls.append(budget.api_key.team.alert_webhook)
    elif budget.scope == "user" and budget.user_id:
        urls.extend(budget.user.teams.order_by("name").values_list("alert_webhook", flat=True))
    urls.append(settings.GATEWAY_ALERT_WEBHOOK_URL)
    return list(dict.fromkeys(url.strip() for url in urls if url and url.strip()))


def alert_payload(alert: BudgetAlert) -> dict:
    budget = alert.budget
    return {
        "event": ALERT_EVENT,
        "scope": budget.scope,
        "name": budget.scope_name,
        "period": budget.period,
        "threshold": float(alert.threshold),
        "spent": _decimal_text(alert.spent),
        "limit": _decimal_text(budget.amount),
        "currency": settings.GATEWAY_CURRENCY,
    }


def _decimal_text(amount: Decimal) -> str:
    # Exact, without the column's trailing zeros or an exponent: "12.5", "100".
    return f"{Decimal(amount).normalize():f}"


def budget_alert_deliver(*, alert: BudgetAlert) -> bool | None:
    """One delivery attempt of an alert to the receivers that have not taken it yet. True when it is now
    delivered, False when the attempt failed, None when it was not this run's to send (being sent by
    another run, waiting for its next attempt, or no longer pending)."""
    client = redis_sync()
    hold = ALERT_HOLD_KEY.format(alert_id=alert.pk)
    if not client.set(hold, "sending", nx=True, ex=_SENDING_HOLD_SECONDS):
        return None
    # The row is the second guard: only the run that moves attempts from what it read sends this attempt.
    claimed = BudgetAlert.objects.filter(pk=alert.pk, attempts=alert.attempts, delivered_at__isnull=True).update(
        attempts=F("attempts") + 1
    )
    if not claimed:
        client.delete(hold)
        return None
    attempt = alert.attempts + 1
    sent_key = ALERT_SENT_KEY.format(alert_id=alert.pk)
    already = {member.decode() for member in client.smembers(sent_key)}
    content = orjson.dumps(alert_payload(alert))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "aigateway-budget-alerts",
        "X-Gateway-Alert-Id": str(alert.pk),
    }
    receivers = alert_receivers(alert.budget)
    errors = [] if receivers else ["no alert webhook is set (the team's, or GATEWAY_ALERT_WEBHOOK_URL)"]
    for url in receivers:
        receiver = _receiver_id(url)
        if receiver in already:
            continue
        error = _post(url, content, headers)
        if error is None:
            client.sadd(sent_key, receiver)
            client.expire(sent_key, _SENT_KEEP_SECONDS)
        else:
            errors.append(f"{_origin(url)}: {error}")
    if not errors:
        BudgetAlert.objects.filter(pk=alert.pk).update(delivered_at=timezone.now(), last_error="")
        client.delete(hold, sent_key)
        return True
    last_error = "; ".join(errors)[:_ERROR_MAX_CHARS]
    BudgetAlert.objects.filter(pk=alert.pk).update(last_error=last_error)
    if attempt < ALERT_MAX_ATTEMPTS:
        client.set(hold, "waiting", px=retry_pause_ms(attempt))
        logger.warning(
            "budget alert %s: attempt %d of %d failed: %s", alert.pk, attempt, ALERT_MAX_ATTEMPTS, last_error
        )
    else:
        client.delete(hold, sent_key)
        logger.warning("budget alert %s: not delivered after %d attempts: %s", alert.pk, attempt, last_error)
    return False


def retry_pause_ms(attempt: int) -> int:
    """The pause after failed attempt `attempt` (1-based) before the next one."""
    seconds = max(settings.GATEWAY_BUDGET_ALERT_SECONDS, 0.01) * _RETRY_FACTOR ** (attempt - 1)
    return int(min(seconds, _RETRY_MAX_SECONDS) * 1000)


def _post(url: str, content: bytes, headers: dict[str, str]) -> str | None:
    """POST to one receiver; None on a 2xx answer, else why not (with no part of the URL but its host).

    Through the gateway's one upstream client (providers.upstream): the environment's proxy, the system's
    trust store, the address policy on the receiver's host; redirects are never followed (the policy was
    checked for this URL only)."""
    try:
        answer = upstream_blocking(
            lambda: upstream_fetch("POST", url, headers=headers, content=content, timeout=WEBHOOK_TIMEOUT)
        )
    except AddressRefused as exc:
        return "address refused: " + _redact(exc.problem.replace(url.split("?", 1)[0], "", 1).strip(), url)
    except httpx.HTTPError as exc:
        detail = _redact(str(exc), url)
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    except Exception as exc:  # a malformed URL must fail this alert, not the whole run
        return type(exc).__name__
    if answer.is_success:
        return None
    return f"HTTP {answer.status_code} {answer.reason_phrase}".strip()


def _receiver_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what logs and errors may show (paths and user info carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


def _redact(text: str, url: str) -> str:
    """`text` with the URL cut to its origin and no path, query or user info, in case a library quoted them."""
    origin = _origin(url)
    text = text.replace(url, origin).replace(url.split("?", 1)[0], origin)
    try:
        parts = urlsplit(url)
        secrets = [parts.path, parts.query, parts.username, parts.password]
    except ValueError:
        secrets = []
    for secret in sorted((s for s in secrets if s and len(s) > 1), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text
