"""A provider's extra headers are checked where they are written - Provider.clean, the admin form, the YAML
import - with an error naming the header: a name that is not an HTTP token, a value with a line break, a
NUL or another control character, a header that frames the request. (The relay's handling of rows saved
before these rules is in tests/test_hostile_upstream.py.)"""

import json
import textwrap

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from providers.config_import import ConfigImportError, gateway_config_import
from providers.extra_headers import extra_headers_problem, extra_headers_problems
from providers.models import Provider
from tests.support.data import provider_admin_form

BAD_HEADERS = {
    "space-in-name": ({"X-Team Name": "ops"}, "X-Team Name"),
    "colon-in-name": ({"X-Team: ops": "1"}, "X-Team: ops"),
    "crlf-in-name": ({"X-Team\r\nX-Injected": "1"}, "X-Team\\r\\nX-Injected"),
    "newline-at-end-of-name": ({"X-Team\n": "ops"}, "X-Team\\n"),
    "crlf-in-value": ({"X-Team": "ops\r\nX-Injected: 1"}, "X-Team"),
    "lf-in-value": ({"X-Team": "ops\nX-Injected: 1"}, "X-Team"),
    "nul-in-value": ({"X-Team": "ops\x00"}, "X-Team"),
    "control-in-value": ({"X-Team": "ops\x1b[31m"}, "X-Team"),
    "non-ascii-value": ({"X-Team": "équipe"}, "X-Team"),
    "space-around-value": ({"X-Team": " ops "}, "X-Team"),
    "framing-header": ({"Content-Length": "5"}, "Content-Length"),
    "value-not-text": ({"X-Version": 2}, "X-Version"),
}
GOOD_HEADERS = {
    "anthropic-beta": "tools-2024-04-04,prompt-caching-2024-07-31",
    "HTTP-Referer": "https://example.com/app",
    "X-Title": "My gateway\tapp",
    "X-Empty": "",
    "OpenAI-Organization": "org-123",
}


def _provider(extra_headers) -> Provider:
    return Provider(name="acme", base_url="https://api.example.com/v1", extra_headers=extra_headers)


@pytest.mark.parametrize(("headers", "named"), BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_provider_clean_refuses_a_header_that_would_split_a_request_and_names_it(headers, named):
    with pytest.raises(ValidationError) as excinfo:
        _provider(headers).full_clean(validate_unique=False)
    problems = excinfo.value.message_dict["extra_headers"]
    assert len(problems) == 1
    assert f"'{named}'" in problems[0]


def test_provider_clean_keeps_ordinary_headers_and_refuses_a_list():
    _provider(GOOD_HEADERS).full_clean(validate_unique=False)
    _provider({}).full_clean(validate_unique=False)
    with pytest.raises(ValidationError) as excinfo:
        _provider(["X-Team", "ops"]).full_clean(validate_unique=False)
    assert "object of header name to value" in excinfo.value.message_dict["extra_headers"][0]


def test_every_bad_header_is_reported():
    problems = extra_headers_problems({"A B": "1", "X-Ok": "fine", "X-Nul": "\x00"})
    assert len(problems) == 2
    assert "'A B'" in problems[0] and "'X-Nul'" in problems[1]


def test_the_request_time_check_names_the_first_bad_header():
    assert extra_headers_problem((("X-Ok", "fine"), ("X-Team", "ops\r\nX-Injected: 1"))) == (
        "extra header 'X-Team': the value must not contain a line break (CR, LF) or a NUL"
    )
    assert extra_headers_problem(tuple(GOOD_HEADERS.items())) is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("headers", "named"),
    [BAD_HEADERS["space-in-name"], BAD_HEADERS["crlf-in-value"], BAD_HEADERS["nul-in-value"]],
    ids=["space-in-name", "crlf-in-value", "nul-in-value"],
)
def test_the_admin_form_refuses_a_bad_header_and_names_it(admin_client, settings, headers, named):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    form = provider_admin_form("sk-admin-headers-test", extra_headers=json.dumps(headers))
    response = admin_client.post(reverse("admin:providers_provider_add"), form)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["extra_headers"]
    assert any(f"'{named}'" in error for error in errors), errors
    assert not Provider.objects.exists()


YAML_BAD = {
    "nul-in-value": ('      X-Team: "ops\\0"\n', "'X-Team'", "NUL"),
    "control-in-value": ('      X-Team: "ops\\e[31m"\n', "'X-Team'", "printable ASCII"),
    "framing-header": ('      Content-Length: "5"\n', "'Content-Length'", "set by the HTTP client"),
    "space-in-name": ("      X-Team Name: ops\n", "'X-Team Name'", "HTTP token"),
    "crlf-in-value": ('      X-Team: "ops\\r\\nX-Injected: 1"\n', "'X-Team'", "line break"),
}


@pytest.mark.django_db
@pytest.mark.parametrize(("line", "named", "rule"), YAML_BAD.values(), ids=YAML_BAD.keys())
def test_the_yaml_import_refuses_a_bad_header_at_its_line(line, named, rule):
    text = "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    extra_headers:\n" + line
    with pytest.raises(ConfigImportError) as excinfo:
        gateway_config_import(data_text=textwrap.dedent(text), source_name="gateway.yaml")
    message = str(excinfo.value)
    assert "gateway.yaml line 5" in message
    assert named in message and rule in message
    assert not Provider.objects.exists()
