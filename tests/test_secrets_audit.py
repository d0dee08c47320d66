"""The session-wide secrets audit (tests/support/secrets_audit.py), run on small inner pytest sessions:
a secret made through the audited paths and then logged, or written to a log file under the base
temporary directory, fails the session with a message that names where and shows only a prefix."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LEAKY = """
import logging

from accounts import services
from providers.models import Provider


def test_logs_an_issued_key():
    plaintext = services.key_generate()  # the function api_key_issue calls
    (ROOT_TMP / "issued.txt").write_text(plaintext)
    logging.getLogger("inner.leaky").warning("issued %s", plaintext)


def test_writes_a_provider_secret_to_a_gateway_log(tmp_path):
    provider = Provider(name="p", base_url="https://p.example.com/v1")
    provider.api_key = "sk-upstream-inner-SECRET-0a0b0c0d"
    (tmp_path / "gateway-12345.log").write_text("boot\\nheader sk-upstream-inner-SECRET-0a0b0c0d\\n")


def test_an_exception_with_a_key():
    plaintext = services.key_generate()
    try:
        raise ValueError(plaintext)
    except ValueError:
        logging.getLogger("inner.traceback").exception("failed")
"""

CLEAN = """
import logging

from accounts import services
from providers.models import Provider


def test_keys_and_secrets_that_stay_secret(tmp_path):
    plaintext = services.key_generate()
    logging.getLogger("inner.clean").warning("issued %s...", plaintext[:12])
    provider = Provider(name="p", base_url="https://p.example.com/v1")
    provider.api_key = "sk-upstream-inner-SECRET-0a0b0c0d"
    (tmp_path / "gateway-1.log").write_text("boot, key [redacted]\\n")
    # Secrets the suite did not make are not its business (a test may log a made-up key).
    logging.getLogger("inner.clean").warning("sk-gw-" + "x" * 43)
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "aigateway.settings")

    def run(source: str):
        pytester.makepyfile(test_inner=f"from pathlib import Path\nROOT_TMP = Path({str(pytester.path)!r})\n" + source)
        return pytester.runpytest_subprocess("-p", "tests.support.secrets_audit", "-p", "no:cacheprovider")

    return run


def test_a_leaked_secret_fails_the_session_naming_where_and_never_printing_it(inner, pytester):
    result = inner(LEAKY)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    result.stdout.fnmatch_lines(["*3 passed*"])
    assert "secrets audit: plaintext secrets in logs" in output
    issued = (pytester.path / "issued.txt").read_text()
    assert (
        f"{issued[:12]}... found in log record of logger 'inner.leaky' during test_inner.py::test_logs_an_issued_key"
        in output
    )
    assert "found in log record of logger 'inner.traceback'" in output
    assert "sk-u... (33 characters) found in log file" in output and "gateway-12345.log" in output
    assert issued not in output
    assert "sk-upstream-inner-SECRET-0a0b0c0d" not in output


def test_a_clean_session_passes(inner):
    result = inner(CLEAN)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, output
    assert "secrets audit" not in output
