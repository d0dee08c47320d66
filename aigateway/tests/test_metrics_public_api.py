"""The metrics module reaches prometheus-client through its documented API only: a private field of a
metric (a histogram's bucket counters, its sum) can change shape in any release and silently miscount."""

import ast
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

from aigateway import metrics

SOURCE = Path(metrics.__file__)


def _private_attributes(tree: ast.AST) -> list[str]:
    """`x._name` reads and writes, except on this module's own objects (`self`, the tally)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "_tally", "tally"):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return [f"line {line}: {text}" for line, text in sorted(found)]


def test_no_private_field_of_prometheus_client_is_touched():
    assert _private_attributes(ast.parse(SOURCE.read_text())) == []


def test_the_check_finds_a_private_field():
    """The check above can fail: it sees the kind of access it forbids."""
    sample = "child = DURATION.labels('m', 'p')\nchild._buckets[3].inc(2)\nchild._sum.inc(0.5)\n"
    assert _private_attributes(ast.parse(sample)) == ["line 2: child._buckets", "line 3: child._sum"]


def test_histogram_buckets_and_sum_after_a_flush_through_observe():
    """Values on, between and past the bounds land in the buckets prometheus-client itself would use."""
    values = [0.001, metrics.TIME_BUCKETS[0], 0.3, 0.3, metrics.TIME_BUCKETS[-1], 5000.0]
    for seconds in values:
        metrics.metrics_record(
            {
                "model": "public-api",
                "provider": "p",
                "endpoint": "chat.completions",
                "status_code": 200,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cached_tokens": 0,
                "duration_ms": seconds * 1000.0,
                "ttfb_ms": None,
            }
        )
    metrics.metrics_flush()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.labels.get("model") == "public-api"
    }
    assert samples[("gateway_request_duration_seconds_bucket", "0.005")] == 2
    assert samples[("gateway_request_duration_seconds_bucket", "0.25")] == 2
    assert samples[("gateway_request_duration_seconds_bucket", "0.5")] == 4
    assert samples[("gateway_request_duration_seconds_bucket", "600.0")] == 5
    assert samples[("gateway_request_duration_seconds_bucket", "+Inf")] == 6
    assert samples[("gateway_request_duration_seconds_count", None)] == 6
    assert abs(samples[("gateway_request_duration_seconds_sum", None)] - sum(values)) < 1e-6
