"""Request log records (accounts.request_log), pure: what metadata keeps, what redaction removes, and that a
record cut to the cap never leaves part of a secret behind."""

import base64
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.request_log import request_log_entry, request_log_record_fields, request_metadata

EMAIL = "jane.doe@example.org"
KEY = "sk-proj-" + "Ab3" * 10


def _stored(entry: dict) -> dict:
    return orjson.loads(zlib.decompress(base64.b64decode(entry["body"])))


def test_metadata_keeps_parameters_and_drops_content():
    body = {
        "model": "m",
        "system": "secret plan",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.1,
        "tools": [
            {"type": "function", "function": {"name": "f"}},
            {"name": "g", "input_schema": {}},
            {"type": "web_search"},
        ],
    }
    assert request_metadata(body) == {
        "model": "m",
        "temperature": 0.1,
        "messages_count": 1,
        "tools": ["f", "g", "web_search"],
    }
    responses = {"model": "m", "instructions": "x", "input": [{"role": "user", "content": "y"}], "store": False}
    assert request_metadata(responses) == {"model": "m", "store": False, "input_count": 1}


def test_every_string_is_redacted_object_keys_included(settings):
    settings.GATEWAY_LOG_REDACT_PATTERNS = [r"ACME-\d+"]
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": f"mail {EMAIL}, key {KEY}, id ACME-42"}],
        EMAIL: 1,
    }
    entry = request_log_entry(level="full", request=request, answer={"content": [{"text": f"ok {EMAIL}"}]})
    text = orjson.dumps(_stored(entry)).decode()
    for secret in (EMAIL, KEY, "ACME-42"):
        assert secret not in text and secret not in entry["search"]
    assert entry["redactions"] == 5
    assert "mail [redacted email], key [redacted], id [redacted]" in entry["search"]


def test_card_numbers_only_when_luhn_valid():
    content = "card 4242-4242-4242-4242, order 1234 5678 9012 3456, phone 4111111111111111"
    entry = request_log_entry(level="full", request={"messages": [{"role": "user", "content": content}]}, answer=None)
    assert entry["search"] == "card [redacted card], order 1234 5678 9012 3456, phone [redacted card]"


def test_the_providers_key_is_redacted_wherever_it_is(settings):
    secret = "plain-provider-secret-123"
    entry = request_log_entry(
        level="full", request={"messages": [{"role": "user", "content": f"x{secret}y"}]}, answer=None, secrets=(secret,)
    )
    assert secret not in entry["search"] and entry["redactions"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 400),
    st.integers(300, 2000),
    st.sampled_from([EMAIL, KEY, "4111 1111 1111 1111", "AKIAABCDEFGHIJKLMNOP"]),
)
def test_a_cut_never_leaves_part_of_a_secret(position, limit, secret):
    from django.conf import settings as django_settings

    django_settings.GATEWAY_LOG_MAX_BYTES = limit
    try:
        words = "lorem ipsum dolor sit amet " * 80
        content = words[:position] + " " + secret + " " + words
        entry = request_log_entry(
            level="full", request={"messages": [{"role": "user", "content": content}]}, answer=None
        )
    finally:
        django_settings.GATEWAY_LOG_MAX_BYTES = 256 * 1024
    stored = zlib.decompress(base64.b64decode(entry["body"])).decode()
    assert len(stored.encode()) <= limit
    # No run of 6 characters of the secret survives (the words around it share none of them).
    for start in range(len(secret) - 5):
        assert secret[start : start + 6] not in stored


def test_a_record_member_the_gateway_did_not_write_is_ignored():
    fields = {"api_key_id": 1, "user_id": 2, "team_id": None, "model": "m", "endpoint": "e", "status_code": 200}
    for log in (
        None,
        "x",
        {"level": "all"},
        {"level": "full", "body": "not base64!"},
        {"level": "full", "body": "", "search": 5},
    ):
        assert request_log_record_fields(log, request_id="r", created_at=None, fields=fields) is None
    good = request_log_entry(level="metadata", request={"model": "m"}, answer=None)
    row = request_log_record_fields(good, request_id="r", created_at=None, fields=fields)
    assert row["level"] == "metadata" and row["stored_bytes"] == len(row["body"])


@pytest.mark.parametrize("level", ["metadata", "full"])
def test_a_small_record_is_kept_whole(level):
    entry = request_log_entry(
        level=level, request={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, answer=None
    )
    assert not entry["truncated"] and entry["original_bytes"] >= len(orjson.dumps(_stored(entry)))
