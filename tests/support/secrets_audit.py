"""A session-wide audit: no plaintext secret the suite creates may reach a log.

Every gateway API key issued in the test process (through `api_key_issue`: tests/support/data.py's
`key_create`, the admin, `issue_key`, rotation) and every provider secret stored (the Provider
`api_key` setter: `provider_create`, the admin, the YAML import) is remembered. Every log record of
the test process is checked as it is emitted; the output of the simulator and of Celery workers as
it is read; and at the end of the session every log file under pytest's base temporary directory
(the gateway processes' logs). A secret found anywhere fails the session (exit status 1) with a
message naming where, and the secret's prefix only.
"""

import logging
from pathlib import Path

import pytest

GATEWAY_KEY_START = "sk-gw-"
GATEWAY_KEY_LENGTH = len(GATEWAY_KEY_START) + 43  # key_generate: token_urlsafe(32)
# Shorter provider secrets ("x", "sk-up") are test stand-ins that also occur in ordinary words.
MIN_PROVIDER_SECRET_LENGTH = 12
LOG_FILE_PATTERNS = ("*.log", "*.out")


def secret_shown(secret: str) -> str:
    """What a report may print of a secret: its display prefix, never the rest."""
    if secret.startswith(GATEWAY_KEY_START):
        return secret[:12] + "..."
    return f"{secret[:4]}... ({len(secret)} characters)"


class SecretsAudit:
    def __init__(self) -> None:
        self.gateway_keys: set[str] = set()
        self.provider_secrets: set[str] = set()
        self.findings: dict[tuple[str, str], None] = {}  # (secret shown, where), in order, once each
        self.current_test = "outside any test"

    def gateway_key_add(self, plaintext: str) -> None:
        self.gateway_keys.add(plaintext)

    def provider_secret_add(self, plaintext: str) -> None:
        if plaintext and len(plaintext) >= MIN_PROVIDER_SECRET_LENGTH:
            self.provider_secrets.add(plaintext)

    def leaked(self, text: str) -> list[str]:
        """The known secrets that occur in `text`."""
        found = []
        start = text.find(GATEWAY_KEY_START)
        while start != -1:
            candidate = text[start : start + GATEWAY_KEY_LENGTH]
            if candidate in self.gateway_keys:
                found.append(candidate)
            start = text.find(GATEWAY_KEY_START, start + 1)
        found.extend(secret for secret in self.provider_secrets if secret in text)
        return found

    def scan(self, text: str, where: str) -> None:
        for secret in self.leaked(text):
            self.findings.setdefault((secret_shown(secret), where), None)


AUDIT = SecretsAudit()


class AuditLogHandler(logging.Handler):
    """Checks every record of the test process, as it is emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record with mismatched args still has its parts
            text = f"{record.msg} {record.args}"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        AUDIT.scan(text, f"log record of logger '{record.name}' during {AUDIT.current_test}")


_handler = AuditLogHandler(level=logging.NOTSET)


def _handler_install() -> None:
    # logging.config.dictConfig (Django's setup) replaces the root logger's handlers: re-add after it.
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)


def _wrap_sources() -> None:
    """Remember secrets where they are made, and read child-process output as it passes; each wrapper
    calls the original and returns what it returns."""
    import accounts.services
    import providers.models
    import tests.support.celery
    import tests.support.simulator

    key_generate = accounts.services.key_generate

    def key_generate_audited() -> str:
        plaintext = key_generate()
        AUDIT.gateway_key_add(plaintext)
        return plaintext

    accounts.services.key_generate = key_generate_audited

    secret_encrypt = providers.models.secret_encrypt

    def secret_encrypt_audited(plaintext: str) -> str:
        AUDIT.provider_secret_add(plaintext)
        return secret_encrypt(plaintext)

    providers.models.secret_encrypt = secret_encrypt_audited

    drain = tests.support.simulator._drain

    def drain_audited(stream, lines) -> None:
        def scanned():
            for line in stream:
                AUDIT.scan(line, f"simulator output during {AUDIT.current_test}")
                yield line

        drain(scanned(), lines)

    tests.support.simulator._drain = drain_audited

    worker_class = tests.support.celery.CeleryWorkerProcess
    worker_stop = worker_class.stop

    def worker_stop_audited(self, *args, **kwargs):
        result = worker_stop(self, *args, **kwargs)
        AUDIT.scan(self.log(), f"celery worker log {self.nodename} (stopped during {AUDIT.current_test})")
        return result

    worker_class.stop = worker_stop_audited


def pytest_sessionstart(session) -> None:
    _handler_install()
    _wrap_sources()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    AUDIT.current_test = item.nodeid
    _handler_install()
    try:
        return (yield)
    finally:
        AUDIT.current_test = "outside any test"


def _log_files(session) -> list[Path]:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return []
    basetemp = factory.getbasetemp()
    return sorted({path for pattern in LOG_FILE_PATTERNS for path in basetemp.rglob(pattern) if path.is_file()})


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    for path in _log_files(session):
        AUDIT.scan(path.read_text(errors="replace"), f"log file {path}")
    if not AUDIT.findings:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{shown} found in {where}" for shown, where in AUDIT.findings]
    if reporter is not None:
        reporter.write_sep("=", "secrets audit: plaintext secrets in logs", red=True, bold=True)
        for line in lines:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
