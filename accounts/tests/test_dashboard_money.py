"""The ops dashboard's money and refusals: the month's spend per team (the team a request ran under, keys
without one as "(no team)"), costs as exact decimal strings in GATEWAY_CURRENCY, and refused requests
(4xx) shown apart from failures (5xx)."""

from datetime import UTC, timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.utils import timezone

from accounts.keys import key_hash
from accounts.models import ApiKey, Team, UsageRecord
from tests.support.data import key_create

URL = "/admin/dashboard/"


@pytest.fixture
def spend(db):
    now = timezone.now()
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    recent = max(month_start, now - timedelta(minutes=1))
    alpha, beta = Team.objects.create(name="Alpha"), Team.objects.create(name="Beta")
    keys = {}
    for name, team in (("alpha", alpha), ("beta", beta), ("loner", None)):
        key = ApiKey.objects.get(key_hash=key_hash(key_create(name)))
        key.team = team
        key.save()
        keys[name] = key
    serial = iter(range(1000))

    def record(key, team, cost: str, *, status: int = 200, error_type: str = "", when=recent) -> None:
        UsageRecord.objects.create(
            request_id=f"req-money-{next(serial)}",
            api_key=key,
            team=team,
            model="m1",
            provider="" if status in (403, 413, 429) else "sim",
            endpoint="chat.completions",
            status_code=status,
            error_type=error_type,
            cost=Decimal(cost),
            created_at=when,
        )

    record(keys["alpha"], alpha, "0.00012345")
    record(keys["alpha"], alpha, "0.1")
    record(keys["alpha"], alpha, "1.23456789")
    record(keys["alpha"], alpha, "100", when=month_start - timedelta(days=1))  # last month: not counted
    record(keys["beta"], beta, "0.00000001")
    record(keys["beta"], beta, "0", status=429, error_type="rate_limit_exceeded")
    # Run under Beta before the key moved to Alpha: Beta's spend, as Beta's budget counted it.
    record(keys["alpha"], beta, "2.5")
    record(keys["loner"], None, "0.5")
    record(keys["loner"], None, "0.25", status=502, error_type="upstream_unavailable")
    record(keys["loner"], None, "0", status=403, error_type="model_not_allowed")
    record(keys["loner"], None, "0", status=429, error_type="rate_limit_exceeded")
    record(keys["loner"], None, "0", status=499, error_type="client_disconnected")


def _team_table(html: str) -> str:
    start = html.index('id="gw-team-spend"')
    return html[start : html.index("</table>", start)]


def test_team_spend_this_month_in_exact_decimals_with_the_currency(admin_client, spend, settings):
    settings.GATEWAY_CURRENCY = "EUR"

    response = admin_client.get(URL)

    assert response.status_code == 200
    rows = [(row["team"], row["requests"], row["cost"]) for row in response.context["team_spend"]]
    assert rows == [
        ("Beta", 3, Decimal("2.50000001")),
        ("Alpha", 3, Decimal("1.33469134")),
        ("(no team)", 5, Decimal("0.75")),
    ]
    html = unescape(response.content.decode())
    table = _team_table(html)
    for text in ("Cost (EUR)", "Beta", "2.50000001", "Alpha", "1.33469134", "(no team)", "0.75"):
        assert text in table, text
    assert "100" not in table.replace("Cost (EUR)", "")  # last month's spend is not this month's
    assert "1.3347" not in html.replace("1.33469134", "")  # never rounded
    assert html.count("Cost (EUR)") >= 3 and "USD" not in html
    # The window's total, exact: every cost of the last hour.
    total = "4.58469135"
    assert response.context["summary"]["cost_text"] == total and total in html


def test_refused_requests_are_shown_apart_from_failures(admin_client, spend):
    response = admin_client.get(URL)

    summary = response.context["summary"]
    # 499 (the client left) is neither.
    assert (summary["errors"], summary["refused"], summary["failed"]) == (4, 3, 1)
    assert [(row["status_code"], row["error_type"], row["requests"]) for row in response.context["refusals"]] == [
        (429, "rate_limit_exceeded", 2),
        (403, "model_not_allowed", 1),
    ]
    html = response.content.decode()
    assert 'id="gw-total-refused">3<' in html and 'id="gw-total-failed">1<' in html
    table = html[html.index('id="gw-refusals"') :]
    table = table[: table.index("</table>")]
    assert "rate_limit_exceeded" in table and "model_not_allowed" in table and "upstream_unavailable" not in table
    by_key = {row["key_name"]: row for row in response.context["top_keys"]}
    assert (by_key["loner-key"]["errors"], by_key["loner-key"]["refused"]) == (3, 2)
