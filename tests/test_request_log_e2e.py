"""The request log end to end: a gateway process, the simulator, real Redis and the usage flush. Records are
opt-in (the most specific of key, team and tier wins), linked to their usage record by request id, redacted
before they are stored (no secret of this suite reaches the table), compressed, capped, and counted in
/metrics."""

import time
import zlib

import httpx
import orjson
import pytest

from accounts.keys import key_hash
from accounts.models import ApiKey, RequestLog, Team, UsageRecord
from accounts.request_log import request_log_body
from accounts.usage import usage_flush
from tests.support.compare import compare_stream
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

UPSTREAM_SECRET = "sk-upstream-" + "q7" * 12
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.org"
AWS = "AKIA" + "ABCDEFGHIJKLMNOP"


@pytest.fixture
def sim(fresh_simulator):
    provider = provider_create("sim", fresh_simulator.openai_base, api_key=UPSTREAM_SECRET)
    claude = provider_create("claude-sim", fresh_simulator.anthropic_base, dialect="anthropic", api_key=UPSTREAM_SECRET)
    model_create("gpt", [(provider, "sim-echo?echo=1", 0)])
    model_create("claude", [(claude, "sim-claude?tokens=6", 0)])
    model_create("gpt-drop", [(provider, "sim-echo?echo=1&drop_after=12", 0)])
    return fresh_simulator


def _key(level: str, *, tier: str | None = None, team: Team | None = None, key_level: str = "") -> str:
    plaintext = key_create(tier or f"log-{level}", log_bodies=level)
    ApiKey.objects.filter(key_hash=key_hash(plaintext)).update(team=team, log_bodies=key_level)
    return plaintext


def _chat(gateway, key: str, content: str, *, stream: bool = False, model: str = "gpt", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(gateway.openai_base + "/chat/completions", json=body, headers=headers, timeout=30)


def _flushed(count: int) -> list[RequestLog]:
    wait_usage(lambda events: len(events) >= count, timeout=10)
    usage_flush()
    return list(RequestLog.objects.order_by("created_at"))


def _streamed_text(response: httpx.Response) -> str:
    parts = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def test_a_full_record_keeps_the_request_and_the_assembled_answer_linked_to_its_usage_record(gateway, sim):
    key = _key("full")
    prompt = "Summarise the quarterly figures for the northern region"
    response = _chat(gateway, key, prompt, stream=True, temperature=0.2)
    assert response.status_code == 200
    (record,) = _flushed(1)
    usage = UsageRecord.objects.get(request_id=response.headers["x-request-id"])
    assert record.request_id == usage.request_id and record.level == "full" and record.status_code == 200
    assert (record.model, record.endpoint, record.api_key_id) == ("gpt", "chat.completions", usage.api_key_id)
    stored = request_log_body(record.body)
    assert stored["request"]["messages"] == [{"role": "user", "content": prompt}]
    assert stored["request"]["temperature"] == 0.2
    # The stream's answer, assembled as a complete chat completion.
    answer = stored["response"]
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == _streamed_text(response)
    assert prompt in record.search_text and answer["choices"][0]["message"]["content"][:20] in record.search_text
    assert record.stored_bytes == len(bytes(record.body)) < record.original_bytes
    assert not record.truncated


def test_a_metadata_record_keeps_parameters_without_content(gateway, sim):
    key = _key("metadata")
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    response = _chat(gateway, key, "private words here", max_tokens=30, tools=[tool])
    assert response.status_code == 200
    (record,) = _flushed(1)
    stored = request_log_body(record.body)
    assert stored == {
        "request": {"model": "gpt", "stream": False, "max_tokens": 30, "messages_count": 1, "tools": ["lookup"]}
    }
    assert record.search_text == "" and record.level == "metadata"
    assert b"private" not in zlib.decompress(bytes(record.body))


def test_logging_is_off_by_default_and_the_most_specific_setting_wins(gateway, sim):
    quiet = key_create("plain")
    loud_team = Team.objects.create(name="loud", log_bodies="full")
    by_team = _key("off", tier="plain", team=loud_team)
    silenced = _key("off", tier="plain", team=loud_team, key_level="off")
    by_key = _key("off", tier="plain", key_level="metadata")
    ids = {name: _chat(gateway, key, "hello").headers["x-request-id"] for name, key in
           (("quiet", quiet), ("by_team", by_team), ("silenced", silenced), ("by_key", by_key))}  # fmt: skip
    records = {record.request_id: record.level for record in _flushed(4)}
    assert records == {ids["by_team"]: "full", ids["by_key"]: "metadata"}


def test_no_secret_of_this_suite_reaches_the_table(gateway_factory, sim):
    gateway = gateway_factory(GATEWAY_LOG_REDACT_PATTERNS=r"EMP-\d{6}")
    key = _key("full")
    secrets = [
        key,
        UPSTREAM_SECRET,
        EMAIL,
        CARD,
        CARD.replace(" ", ""),
        AWS,
        "sk-ant-api03-" + "x9" * 20,
        "ghp_" + "a1" * 18,
        "EMP-123456",
        "Bearer abc.def.ghi-" + "z" * 20,
    ]
    leaky = (
        f"My gateway key is {key}, the upstream one {UPSTREAM_SECRET}. Mail {EMAIL}, card {CARD} "
        f"({CARD.replace(' ', '')}), aws {AWS}, anthropic sk-ant-api03-{'x9' * 20}, github ghp_{'a1' * 18}, "
        f"employee EMP-123456, header Authorization: Bearer abc.def.ghi-{'z' * 20}"
    )
    echoed = _chat(gateway, key, leaky)
    # The client gets its answer as the provider wrote it (here, its own words back): only the log is redacted.
    assert EMAIL in echoed.json()["choices"][0]["message"]["content"]
    ids = [
        echoed.headers["x-request-id"],
        _chat(gateway, key, leaky, stream=True, model="claude", user=EMAIL).headers["x-request-id"],
        # Echoed back by the simulator: the answer carries the secrets too.
        _chat(gateway, key, leaky, model="gpt-drop", stream=True).headers["x-request-id"],
    ]
    records = _flushed(3)
    assert sorted(r.request_id for r in records) == sorted(ids)
    for record in records:
        texts = [zlib.decompress(bytes(record.body)).decode(), record.search_text]
        for text in texts:
            for secret in secrets:
                assert secret not in text, (secret, record.request_id)
        assert record.redactions >= 10
    # The words around them stay readable.
    assert "My gateway key is [redacted]" in records[0].search_text
    assert "[redacted email]" in records[0].search_text and "[redacted card]" in records[0].search_text


def test_a_record_over_the_cap_is_cut_to_fit_and_marked(gateway_factory, sim):
    gateway = gateway_factory(GATEWAY_LOG_MAX_BYTES="2000")
    key = _key("full")
    response = _chat(gateway, key, "word " * 3000)
    assert response.status_code == 200
    (record,) = _flushed(1)
    stored = zlib.decompress(bytes(record.body))
    assert record.truncated and len(stored) <= 2000 and record.original_bytes > 15000
    body = orjson.loads(stored)
    content = body["request"]["messages"][0]["content"]
    assert content.startswith("word word") and "…[cut " in content


def test_a_cut_off_stream_keeps_what_arrived(gateway, sim):
    key = _key("full")
    response = _chat(gateway, key, "tell me more", stream=True, model="gpt-drop")
    assert response.status_code == 200 and "error" in response.text
    (record,) = _flushed(1)
    assert record.status_code == 502
    answer = request_log_body(record.body)["response"]
    assert answer["choices"][0]["message"]["content"] == _streamed_text(response)


def test_each_model_of_a_compare_run_is_logged(gateway, sim):
    key = _key("full")
    run = compare_stream(
        gateway.url, key, {"models": ["gpt", "claude"], "messages": [{"role": "user", "content": "hi"}]}
    )
    assert {e["type"] for e in run.events} >= {"done"}
    records = _flushed(2)
    assert sorted(r.model for r in records) == ["claude", "gpt"] and {r.endpoint for r in records} == {"compare"}
    for record in records:
        assert request_log_body(record.body)["response"]["choices"][0]["message"]["content"] == run.text(record.model)


def test_request_log_metrics(gateway, sim):
    key = _key("full")
    _chat(gateway, key, f"mail {EMAIL} please")
    _flushed(1)

    def scraped() -> dict[str, float]:
        values = {}
        for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("gateway_request_log_") or line.startswith("gateway_usage_queue_depth"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def counted() -> bool:
        values = scraped()
        return (
            values.get("gateway_request_log_records_total", 0) >= 1
            and values.get("gateway_request_log_stored_bytes_total", 0) > 0
            and values.get('gateway_request_log_redactions_total{level="full"}', 0) >= 1
            and "gateway_usage_queue_depth" in values
        )

    eventually(counted, timeout=10, what="request log metrics")
    time.sleep(0)
