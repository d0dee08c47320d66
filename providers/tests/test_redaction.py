"""upstream_message_redact: every credential shape a provider's message may quote is replaced, ordinary text
is left alone, and JSON text stays JSON (the relay redacts upstream error events as their JSON text)."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigateway.errors import GatewayError
from providers.redaction import REDACTED, upstream_message_redact

KEY = "prov_4q9Zx7Lm2Rt8Wv5Kc3HnBb6"


FAKE_TAIL = "AbCdEf" + "0123456789"


@pytest.mark.parametrize(
    "message, secret_part",
    [
        ("bad request: authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("headers were Authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ('{"x-api-key": "k-123456", "other": 1}', "k-123456"),
        ("got x-api-key:k-123456;", "k-123456"),
        ("token was Bearer eyJhbGciOi.eyJzdWIi.sig", "eyJhbGciOi"),
        # Key-shaped values are assembled here: no file carries one whole.
        ("invalid key " + "sk-proj-" + FAKE_TAIL, FAKE_TAIL),
        ("invalid key " + "-".join(["sk", "ant", "api03", FAKE_TAIL]), FAKE_TAIL),
        ("groq key " + "gsk_" + FAKE_TAIL + " rejected", FAKE_TAIL),
        ("GET /v1/models?key=AIzaSyA-abcdefghijklmnopqrstuv", "abcdefghijklmnop"),
        ("see https://x.example/v1?api_key=s3cr3t&x=1", "s3cr3t"),
        (f"the key {KEY} is not valid", KEY),
    ],
)
def test_credentials_are_redacted(message, secret_part):
    redacted = upstream_message_redact(message, secrets=(KEY,))
    assert secret_part not in redacted
    assert REDACTED in redacted
    assert upstream_message_redact(redacted, secrets=(KEY,)) == redacted


def test_ordinary_text_is_left_alone():
    message = "max_tokens: 100000 > 8192, which is the maximum allowed for this model; the key 'messages' is missing"
    assert upstream_message_redact(message, secrets=(KEY, "short")) == message


def test_a_secret_cut_where_a_long_message_was_shortened_leaves_no_piece():
    for cut in range(4, len(KEY) - 3):
        message = GatewayError(400, "x", "a" * (499 - cut) + KEY + "b" * 600).message
        redacted = upstream_message_redact(message, secrets=(KEY,))
        pieces = {KEY[i : i + 6] for i in range(len(KEY) - 5)}
        assert not [piece for piece in pieces if piece in redacted], (cut, redacted)


JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=8,
)
CREDENTIALS = st.sampled_from(
    ['authorization: Bearer x"y', "x-api-key=\\", 'Bearer a\\"b', "sk-" + "a" * 12 + '"', "?key=v\\u0022", KEY]
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_TEXT, credential=CREDENTIALS)
def test_json_text_stays_json(value, credential):
    text = orjson.dumps({"error": {"message": credential, "detail": value}}).decode()
    parsed = orjson.loads(upstream_message_redact(text, secrets=(KEY,)))
    assert KEY not in orjson.dumps(parsed).decode()
