"""The ops dashboard's response cache figures: hits, hit ratio and money saved over the chosen window, per
model and per team (only those with hits), amounts exact as Decimal strings; and the purge-everything button,
shown to staff who may change models and posting to the confirmation page with a CSRF token."""

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.keys import key_hash
from accounts.models import ApiKey, Team, UsageRecord
from tests.support.data import key_create

URL = "/admin/dashboard/"


@pytest.fixture
def records(db):
    now = timezone.now()
    alpha, beta = Team.objects.create(name="Alpha"), Team.objects.create(name="Beta")
    keys = {}
    for name, team in (("alpha", alpha), ("beta", beta), ("loner", None)):
        key = ApiKey.objects.get(key_hash=key_hash(key_create(name)))
        key.team = team
        key.save()
        keys[name] = key
    serial = iter(range(1000))

    def record(key, model: str, *, hit=False, saved="0", cost="0", ago=timedelta(minutes=1), status=200) -> None:
        UsageRecord.objects.create(
            request_id=f"req-cache-{next(serial)}",
            api_key=key,
            team=key.team,
            model=model,
            endpoint="chat.completions",
            status_code=status,
            cost=Decimal(cost),
            cache_hit=hit,
            cost_saved=Decimal(saved),
            created_at=now - ago,
        )

    record(keys["alpha"], "m1", cost="0.00012345")
    record(keys["alpha"], "m1", hit=True, saved="0.00012345")
    record(keys["alpha"], "m1", hit=True, saved="0.00012345")
    record(keys["alpha"], "m2", cost="1.5")
    record(keys["beta"], "m2", hit=True, saved="1.5")
    record(keys["beta"], "m3", cost="0.1", status=429)  # a model without hits is not listed
    record(keys["loner"], "m1", hit=True, saved="0.00000001")
    # Three hours ago: in the day's window, not the hour's.
    record(keys["beta"], "m2", hit=True, saved="10", ago=timedelta(hours=3))
    record(keys["loner"], "m2", cost="2", ago=timedelta(hours=3))
    return keys


def table(html: str, table_id: str) -> list[list[str]]:
    start = html.index(f'id="{table_id}"')
    body = html[start : html.index("</table>", start)]
    body = body[body.index("<tbody>") :]
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def card(html: str, card_id: str) -> str:
    return re.search(rf'id="{card_id}">([^<]*)<', html).group(1)


def test_cache_figures_of_the_last_hour_per_model_and_team(admin_client, records, settings):
    settings.GATEWAY_CURRENCY = "EUR"
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL)
    assert response.status_code == 200
    html = unescape(response.content.decode())

    summary = response.context["response_cache"]["summary"]
    assert (summary["calls"], summary["hits"], summary["ratio"]) == (7, 4, Decimal("57.1"))
    assert summary["saved"] == Decimal("1.50024691") and isinstance(summary["saved"], Decimal)
    assert card(html, "gw-cache-hits") == "4"
    assert card(html, "gw-cache-ratio") == "57.1%"
    assert card(html, "gw-cache-saved") == "1.50024691"
    assert "Saved by cache (EUR)" in html

    assert table(html, "gw-cache-models") == [
        ["m2", "2", "1", "50.0%", "1.50"],
        ["m1", "4", "3", "75.0%", "0.00024691"],
    ]
    assert table(html, "gw-cache-teams") == [
        ["Beta", "2", "1", "50.0%", "1.50"],
        ["Alpha", "4", "2", "50.0%", "0.0002469"],
        ["(no team)", "1", "1", "100.0%", "0.00000001"],
    ]
    # Three aggregate queries, whatever the number of records.
    assert len([q for q in queries.captured_queries if "cache_hit" in q["sql"]]) == 3


def test_cache_figures_of_the_last_day(admin_client, records):
    html = unescape(admin_client.get(URL + "?window=24h").content.decode())
    assert card(html, "gw-cache-hits") == "5"
    assert card(html, "gw-cache-ratio") == "55.6%"
    assert card(html, "gw-cache-saved") == "11.50024691"
    assert table(html, "gw-cache-models")[0] == ["m2", "4", "2", "50.0%", "11.50"]
    assert table(html, "gw-cache-teams")[0] == ["Beta", "3", "2", "66.7%", "11.50"]


def test_no_hits_says_so(admin_client, db):
    html = unescape(admin_client.get(URL).content.decode())
    assert card(html, "gw-cache-hits") == "0"
    assert card(html, "gw-cache-ratio") == "-"
    assert card(html, "gw-cache-saved") == "0.00"
    assert table(html, "gw-cache-models") == [["No cache hits in this window."]]
    assert table(html, "gw-cache-teams") == [["No cache hits in this window."]]


def test_purge_button_posts_to_the_confirmation_page_for_staff_who_may_change_models(admin_client, client, db):
    html = admin_client.get(URL).content.decode()
    form = html[html.index('id="gw-cache-purge"') - 200 :]
    form = form[form.index("<form") : form.index("</form>")]
    assert 'method="post" action="/admin/providers/model/cache-purge/"' in form
    assert 'name="csrfmiddlewaretoken"' in form and 'name="return_to" value="dashboard"' in form
    assert 'name="confirm"' not in form  # the confirmation page asks

    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_model"))
    client.force_login(viewer)
    page = client.get(URL)
    assert page.status_code == 200 and 'id="gw-cache-purge"' not in page.content.decode()
