"""The in-process tallies behind /metrics, written to prometheus-client's multi-process files, read back
exactly as prometheus-client itself would have counted them; the page's token and methods; request lines."""

import logging
import os
from pathlib import Path

import orjson
import pytest
from django.test import AsyncRequestFactory, override_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.utils import floatToGoString

from aigateway import metrics
from aigateway.logs import JsonFormatter, RequestLine, request_log


def _collected() -> dict[str, dict[tuple, float]]:
    metrics.metrics_flush()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    samples: dict[str, dict[tuple, float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _event(model: str, **fields) -> dict:
    event = {
        "model": model,
        "provider": "p",
        "endpoint": "chat.completions",
        "status_code": 200,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "duration_ms": 1.0,
        "ttfb_ms": None,
    }
    event.update(fields)
    return event


@settings(max_examples=60, deadline=None)
@given(durations=st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=40))
def test_histogram_tallies_equal_what_prometheus_would_count(durations):
    """Cumulative buckets `le` count the observations <= the bound, the sum adds them, whatever the values
    (bounds themselves included)."""
    model = f"h-{abs(hash(tuple(durations)))}"
    durations = durations + [metrics.TIME_BUCKETS[3]]  # a value right on a bound
    for seconds in durations:
        metrics.metrics_record(_event(model, duration_ms=seconds * 1000.0))
    samples = _collected()
    buckets = samples["gateway_request_duration_seconds_bucket"]
    for bound in metrics.TIME_BUCKETS:
        expected = sum(1 for s in durations if s <= bound)
        key = (("le", floatToGoString(bound)), ("model", model), ("provider", "p"))
        assert buckets[key] == expected, bound
    assert buckets[(("le", "+Inf"), ("model", model), ("provider", "p"))] == len(durations)
    assert samples["gateway_request_duration_seconds_count"][(("model", model), ("provider", "p"))] == len(durations)
    total = samples["gateway_request_duration_seconds_sum"][(("model", model), ("provider", "p"))]
    assert total == pytest.approx(sum(s for s in durations))


def test_counters_tokens_errors_and_responses_add_up_across_flushes():
    for index in range(7):
        metrics.metrics_record(
            _event("c-model", prompt_tokens=10, completion_tokens=index, cached_tokens=2, ttfb_ms=5.0),
            [("prov-a", "timeout")] if index % 2 else [],
        )
        if index == 3:
            metrics.metrics_flush()  # a flush mid-way must neither lose nor repeat a count
    metrics.metrics_response("chat_completions", 404)
    metrics.metrics_response("chat_completions", 404)
    samples = _collected()
    labels = (("endpoint", "chat.completions"), ("model", "c-model"), ("provider", "p"), ("status", "200"))
    assert samples["gateway_requests_total"][labels] == 7
    tokens = samples["gateway_tokens_total"]
    assert tokens[(("kind", "prompt"), ("model", "c-model"))] == 70
    assert tokens[(("kind", "completion"), ("model", "c-model"))] == sum(range(7))
    assert tokens[(("kind", "cached"), ("model", "c-model"))] == 14
    assert samples["gateway_upstream_errors_total"][(("kind", "timeout"), ("provider", "prov-a"))] == 3
    assert samples["gateway_http_responses_total"][(("status", "404"), ("view", "chat_completions"))] >= 2
    assert samples["gateway_time_to_first_byte_seconds_count"][(("model", "c-model"), ("provider", "p"))] == 7


def test_streams_in_flight_follow_opens_and_closes():
    metrics.metrics_stream_opened()
    metrics.metrics_stream_opened()
    assert _collected()["gateway_streams_in_flight"][()] == 2
    metrics.metrics_stream_closed()
    metrics.metrics_stream_closed()
    assert _collected()["gateway_streams_in_flight"][()] == 0


def test_a_dead_workers_live_gauge_is_left_out(tmp_path):
    """A worker killed without its exit hook leaves its gauge file: the next scrape drops it."""
    dead = tmp_path / "gauge_livesum_999999999.db"
    dead.write_bytes(b"")
    alive = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    alive.write_bytes(b"")
    metrics._dead_workers_forget(Path(tmp_path))
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic s3cret-token", 401),
        ("Bearer s3cret-token", 200),
        ("bearer s3cret-token", 200),
    ],
)
async def test_the_metrics_page_asks_for_its_token(header, status, monkeypatch):
    async def no_shared_state():
        raise ConnectionError("no redis in this test")

    monkeypatch.setattr(metrics, "_shared_state", no_shared_state)
    headers = {"Authorization": header} if header else {}
    with override_settings(GATEWAY_METRICS_TOKEN="s3cret-token"):
        response = await metrics.metrics_view(AsyncRequestFactory().get("/metrics", headers=headers))
    assert response.status_code == status
    if status == 401:
        assert b"s3cret" not in response.content and b"metrics token" in response.content
    else:
        assert b"gateway_requests_total" in response.content or b"# HELP" in response.content


async def test_the_metrics_page_only_answers_get():
    response = await metrics.metrics_view(AsyncRequestFactory().post("/metrics"))
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"


EVENT = {
    "request_id": "req_1",
    "endpoint": "chat.completions",
    "model": "m",
    "requested_model": "alias",
    "route": "fallback:m",
    "provider": "p",
    "stream": True,
    "status_code": 200,
    "error_type": "",
    "ttfb_ms": 12.5,
    "ttfb_upstream_ms": 11.0,
    "duration_ms": 40.25,
    "prompt_tokens": 9,
    "completion_tokens": 3,
    "cached_tokens": 0,
    "tokens_estimated": False,
    "attempts": 2,
    "run_id": "",
    "api_key_id": 5,
}


def _record(caplog) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name == "aigateway.requests"]
    assert len(records) == 1
    return records[0]


def test_a_request_line_in_json_and_in_text(caplog):
    caplog.set_level(logging.INFO, logger="aigateway.requests")
    request_log(EVENT, key_prefix="sk-gw-abcd")
    record = _record(caplog)
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "request" and line["level"] == "INFO" and line["logger"] == "aigateway.requests"
    for name in ("request_id", "model", "provider", "status_code", "ttfb_ms", "duration_ms", "attempts"):
        assert line[name] == EVENT[name]
    assert line["key_prefix"] == "sk-gw-abcd" and line["failover"] is True
    assert "request_body" not in line and "api_key_id" not in line
    text = record.getMessage()
    assert text.startswith("req_1 200 chat.completions m (asked alias) via p key=sk-gw-abcd ttfb=12.5ms")
    assert "tokens=9+3" in text and "failover=fallback:m" in text


def test_the_prompt_is_logged_only_when_asked(caplog):
    caplog.set_level(logging.INFO, logger="aigateway.requests")
    body = {"messages": [{"role": "user", "content": "the secret plan"}]}
    request_log(EVENT, key_prefix="sk-gw-abcd", body=body)
    line = orjson.loads(JsonFormatter().format(_record(caplog)))
    assert line["request_body"] == body
    assert "the secret plan" in str(RequestLine(line))


def test_any_log_line_is_one_json_object_with_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "failed here" and "ValueError: boom" in line["exception"]
    assert "\n" not in JsonFormatter().format(record)
