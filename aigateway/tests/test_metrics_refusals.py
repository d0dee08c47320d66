"""gateway_refusals_total: refusals counted by status, code and key prefix through the multi-process files,
with a bounded label set (codes outside the fixed set count as "other"); which errors are refusals."""

import os

from prometheus_client import CollectorRegistry, multiprocess

from aigateway import metrics
from aigateway.errors import GatewayError
from streaming.refusals import RECORDED_CODES, is_refusal, model_sent


def _refusals() -> dict[tuple, float]:
    metrics.metrics_flush()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return {
        (sample.labels["status"], sample.labels["code"], sample.labels["key"]): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "gateway_refusals_total"
    }


def test_refusals_add_up_by_status_code_and_key_across_flushes():
    before = _refusals()
    for _ in range(3):
        metrics.metrics_refusal(429, "rate_limit_exceeded", "sk-gw-tst1")
    metrics.metrics_flush()  # a flush mid-way neither loses nor repeats a count
    metrics.metrics_refusal(429, "rate_limit_exceeded", "sk-gw-tst1")
    metrics.metrics_refusal(401, "invalid_api_key")
    after = _refusals()

    def added(labels):
        return after.get(labels, 0) - before.get(labels, 0)

    assert added(("429", "rate_limit_exceeded", "sk-gw-tst1")) == 4
    assert added(("401", "invalid_api_key", "")) == 1


def test_a_code_outside_the_fixed_set_is_counted_as_other():
    before = _refusals()
    for code in ("made-up-1", "made-up-2", "x" * 500):
        metrics.metrics_refusal(400, code, "sk-gw-tst2")
    after = _refusals()
    assert after[("400", "other", "sk-gw-tst2")] - before.get(("400", "other", "sk-gw-tst2"), 0) == 3
    assert not [labels for labels in after if labels[1].startswith(("made-up", "xxx"))]
    assert RECORDED_CODES <= metrics.REFUSAL_CODES


def test_refusals_are_the_gateways_own_4xx():
    assert is_refusal(GatewayError(429, "budget_exceeded", "over budget"))
    assert is_refusal(GatewayError(401, "missing_api_key", "no key"))
    # A provider's 4xx passed on, a client that left, a failure: the relay's to record, not refusals.
    assert not is_refusal(GatewayError(400, "upstream_error", "the provider refused"))
    assert not is_refusal(GatewayError(429, "upstream_rate_limited", "every deployment is limited"))
    assert not is_refusal(GatewayError(499, "cancelled", "gone"))
    assert not is_refusal(GatewayError(503, "no_deployment", "none"))


def test_the_model_sent_is_named_as_the_record_holds_it():
    assert model_sent({"model": "gpt-x"}) == "gpt-x"
    assert model_sent({"model": "m" * 1000}) == "m" * 128
    assert model_sent({"models": ["a", "b", 3]}) == "a,b"
    assert model_sent({"models": [f"m{i}" for i in range(100)]}).count(",") == 15
    assert model_sent(None) == model_sent({}) == model_sent({"model": ""}) == "(unknown)"
