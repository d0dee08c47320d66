"""The dashboard's requests-over-time chart as the browser gets it: each bar stands on the axis, its
errors are the part of it at the bottom (not floating above the axis), and every time label, the last
one too, lies inside the picture."""

import xml.etree.ElementTree as ET
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import UsageRecord

URL = "/admin/dashboard/"
# A label "HH:MM" in the chart's 11 px text is under 36 px wide.
LABEL_HALF_WIDTH = 18


def _records(minutes_ago: int, *, ok: int, errors: int) -> None:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    for n in range(ok + errors):
        UsageRecord.objects.create(
            request_id=f"req-chart-{minutes_ago}-{n}",
            model="m",
            provider="p",
            endpoint="chat.completions",
            status_code=502 if n < errors else 200,
            prompt_tokens=1,
            completion_tokens=1,
            cost=Decimal("0"),
            created_at=at,
        )


def _chart(html: str) -> ET.Element:
    start = html.rindex("<svg", 0, html.index('id="gw-timeseries"'))
    end = html.index("</svg>", start) + len("</svg>")
    return ET.fromstring(html[start:end])


def _check_geometry(chart: ET.Element, bars_expected: dict[int, tuple[int, int]]) -> None:
    """`bars_expected`: requests -> (requests, errors) of the buckets with traffic, found by height."""
    width = float(chart.get("viewBox").split()[2])
    axis = chart.find("line")
    baseline = float(axis.get("y1"))
    assert float(axis.get("y2")) == baseline
    groups = chart.findall("g")
    seen = []
    for group in groups:
        ok = group.find("rect[@class='bar-req']")
        error = group.find("rect[@class='bar-err']")
        ok_top, ok_height = float(ok.get("y")), float(ok.get("height"))
        if error is None:
            assert ok_top + ok_height == pytest.approx(baseline, abs=0.01)
            if ok_height:
                seen.append(("ok", ok_height))
            continue
        error_top, error_height = float(error.get("y")), float(error.get("height"))
        # The errors stand on the axis, the successes on the errors: one bar, no gap, no overlap.
        assert error_top + error_height == pytest.approx(baseline, abs=0.01)
        assert ok_top + ok_height == pytest.approx(error_top, abs=0.01)
        seen.append((error_height, ok_height + error_height))
    with_errors = [item for item in seen if item[0] != "ok"]
    assert len(with_errors) == len(bars_expected)
    for (error_height, total_height), (requests, errors) in zip(
        sorted(with_errors, key=lambda item: item[1]), sorted(bars_expected.values()), strict=True
    ):
        assert error_height / total_height == pytest.approx(errors / requests, abs=0.01)
    labels = [text for group in groups for text in group.findall("text")]
    assert len(labels) >= 4
    for text in labels:
        x, anchor = float(text.get("x")), text.get("text-anchor")
        left = {"start": x, "middle": x - LABEL_HALF_WIDTH, "end": x - 2 * LABEL_HALF_WIDTH}[anchor]
        right = {"start": x + 2 * LABEL_HALF_WIDTH, "middle": x + LABEL_HALF_WIDTH, "end": x}[anchor]
        assert 0 <= left and right <= width, (text.text, x, anchor, width)


@pytest.mark.django_db
def test_hour_chart_stacks_errors_on_the_axis_and_keeps_the_last_label_inside(admin_client):
    _records(3, ok=6, errors=2)
    _records(30, ok=1, errors=3)
    _records(45, ok=5, errors=0)
    response = admin_client.get(URL)
    assert response.status_code == 200
    chart = _chart(response.content.decode())
    _check_geometry(chart, {8: (8, 2), 4: (4, 3)})
    # The current minute is the last bucket, and it carries a label.
    assert len(response.context["timeseries"]) == 61
    assert chart.findall("g")[-1].find("text") is not None


@pytest.mark.django_db
def test_day_chart_has_the_same_geometry(admin_client):
    _records(90, ok=10, errors=10)
    _records(5, ok=3, errors=1)
    response = admin_client.get(URL, {"window": "24h"})
    assert response.status_code == 200
    _check_geometry(_chart(response.content.decode()), {20: (20, 10), 4: (4, 1)})
