"""The management API (/api/v1/...) fuzzed from its own OpenAPI schema: schemathesis generates
requests from the schema drf-spectacular builds in process (the one /api/schema/ serves), valid and
invalid, and sends them to a gateway process; every answer must be a 2xx that matches the schema or
a 4xx in the OpenAI error shape naming the parameter, never a 5xx. Query strings and headers no
schema describes (raw bytes, dates at the ends of the calendar, repeated parameters) are fuzzed in
process through the real ASGI application."""

import asyncio
import logging
from urllib.parse import quote_from_bytes

import orjson
import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import negative_data_rejection

from aigateway.asgi import application
from aigateway.config_watch import config_watch
from tests.support.data import key_create
from tests.support.fuzz import (
    FUZZ_EXAMPLES,
    ErrorLog,
    LogTail,
    asgi_request,
    assert_clean_answer,
    assert_clean_log,
    fuzz_settings,
    headers,
)

pytestmark = pytest.mark.django_db(transaction=True)


def management_schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


schema = schemathesis.openapi.from_dict(management_schema())
schema.config.generation.update(max_examples=FUZZ_EXAMPLES)


@pytest.fixture
def usage_key(settings):
    # Hundreds of reports on one key: the per-key throttle (tested on its own) would answer most of them.
    settings.GATEWAY_USAGE_API_RPM = 0
    key = key_create("fuzz-usage", rpm=None, tpm=1000, daily_tokens=10**6)
    config_watch.invalidate()
    return key


@pytest.fixture
def unthrottled_gateway(gateway_factory):
    return gateway_factory(GATEWAY_USAGE_API_RPM="0")


def test_the_schema_lists_the_management_api():
    operations = {(method.upper(), path) for path, item in management_schema()["paths"].items() for method in item}
    assert ("GET", "/api/v1/usage") in operations


@pytest.mark.filterwarnings("ignore")
@schema.parametrize()
@fuzz_settings()
def test_operations_from_the_schema(case, usage_key, unthrottled_gateway):
    gateway = unthrottled_gateway
    tail = LogTail(gateway)
    response = case.call(base_url=gateway.url, headers={"Authorization": f"Bearer {usage_key}"}, timeout=30)
    assert response.status_code < 500, response.text[:500]
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis lists each header's values
    assert content_type.startswith("application/json"), (response.status_code, content_type, response.content[:300])
    if response.status_code >= 400:
        error = orjson.loads(response.content)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["message"], error
        if response.status_code == 400:
            assert error["param"] in ("start", "end"), error
    else:
        # Unknown query parameters are ignored (as by most HTTP APIs) and the test sends the key itself, so
        # a 2xx to a request the schema calls invalid is no failure here; every other check applies.
        case.validate_response(
            response, excluded_checks=[negative_data_rejection], transport_kwargs={"base_url": gateway.url}
        )
    assert_clean_log(tail.new())


# What an HTTP server lets through in a request line: visible ASCII (uvicorn refuses any other byte).
VISIBLE_ASCII = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24).map(str.encode)
EDGE_DATES = st.sampled_from([b"0001-01-01", b"0001-01-29", b"0001-01-30", b"9999-12-31", b"9999-12-30",
                              b"1969-12-31", b"1970-01-01", b"2024-02-29", b"2023-02-29", b"2024-13-01"])  # fmt: skip
ODD_VALUES = [b"-2024-01-01", b"+2024-01-01", b"2024-1-1", b"20240101", b"2024-01-01T00:00:00", b"%00", b"%ff",
              b"%C3%A9", b"%ED%A0%80", b"", b"null", b"[]", b"1e400"]  # fmt: skip
QUERY_VALUES = st.one_of(
    EDGE_DATES,
    st.sampled_from(ODD_VALUES),
    st.dates().map(lambda day: day.isoformat().encode()),
    VISIBLE_ASCII,
    # Raw bytes past ASCII, as a server that does not refuse them (daphne) passes them on.
    st.binary(min_size=1, max_size=8).filter(lambda raw: not raw.isascii() and b"&" not in raw and b"#" not in raw),
)
QUERY_NAMES = st.sampled_from([b"start", b"end", b"start[]", b"", b"format", b"%ff", b"end%00"])


@st.composite
def queries(draw) -> bytes:
    """`start` and `end` (each perhaps missing) and perhaps some other parameters, in any order."""
    pairs = [(name, draw(QUERY_VALUES)) for name in (b"start", b"end") if draw(st.booleans())]
    pairs = draw(st.permutations(pairs + draw(st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=2))))
    if draw(st.booleans()):  # percent-encoded, as a client library would send them
        pairs = [(name, quote_from_bytes(value).encode()) for name, value in pairs]
    return b"&".join(name + b"=" + value for name, value in pairs)


def test_query_strings_and_headers_in_process(usage_key):
    log = ErrorLog()
    logging.getLogger().addHandler(log)
    try:
        with asyncio.Runner() as runner:

            @fuzz_settings()
            @given(query=queries(), extra=st.one_of(st.just([]), headers), keep_key=st.sampled_from([True, False]))
            def check(query, extra, keep_key):
                log.clear()
                sent = [(b"authorization", f"Bearer {usage_key}".encode())] if keep_key else []
                answer = runner.run(
                    asgi_request(application, "GET", "/api/v1/usage", query=query, headers=[*sent, *extra])
                )
                assert_clean_answer(answer, "openai")
                log.check()

            check()
    finally:
        logging.getLogger().removeHandler(log)


@pytest.mark.parametrize("query", [b"start=\xff", b"end=2024-01-0\xe9", b"\xc3\xa9=1"])
def test_raw_bytes_past_ascii_in_the_query_are_a_json_answer(usage_key, query):
    answer = asyncio.run(
        asgi_request(application, "GET", "/api/v1/usage", query=query,
                     headers=[(b"authorization", f"Bearer {usage_key}".encode())])
    )  # fmt: skip
    assert_clean_answer(answer, "openai")
    assert answer.status in (200, 400)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("end=0001-01-01", "end"),
        ("start=0001-01-01&end=0001-01-02", "start"),
        ("end=9999-12-31", "end"),
        ("start=9999-12-31", "start"),
    ],
)
def test_dates_at_the_ends_of_the_calendar_are_400s_naming_the_parameter(client, usage_key, query, param):
    response = client.get(f"/api/v1/usage?{query}", headers={"Authorization": f"Bearer {usage_key}"})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: must be between 1970-01-01 and 9999-12-30")
    assert error["type"] == "invalid_request_error"
