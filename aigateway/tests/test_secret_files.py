"""Secrets read from files: every setting X may come from the file named by X_FILE (Docker and Kubernetes
secrets, systemd credentials), its trailing newline dropped; X and X_FILE together are refused, and an
unreadable file is named without anything of a secret. End to end: a production gateway given only files
(secret key, database URL, Redis URL, provider secret key) serves a call through a provider whose key it
decrypted with the key from its file."""

import json
import os
import secrets
import subprocess
import sys

import httpx
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.database import database_url_for_subprocess
from tests.support.gateway import ROOT, gateway_env
from tests.support.ports import free_port, stop_process, wait_http
from tests.support.usage import wait_usage

SECRET_NAMES = (
    "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "GATEWAY_PROVIDER_SECRET_KEY", "GATEWAY_METRICS_TOKEN",
    "CELERY_BROKER_URL", "GATEWAY_CACHE_REDIS_URL",
)  # fmt: skip

SHOW_SETTINGS = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "SECRET_KEY": settings.SECRET_KEY, "DB_NAME": str(db["NAME"]), "DB_PASSWORD": db.get("PASSWORD", ""),
    "DB_HOST": db.get("HOST", ""), "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    "PROVIDER_SECRET_KEY": settings.PROVIDER_SECRET_KEY, "METRICS_TOKEN": settings.GATEWAY_METRICS_TOKEN,
}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(SECRET_NAMES)}
    env.update({"DJANGO_SETTINGS_MODULE": "aigateway.settings", "DJANGO_DEBUG": "False", **extra})
    return env


def _settings_of(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + SHOW_SETTINGS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write(path, text: str):
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_secrets_come_from_the_files_their_FILE_variables_name(tmp_path):
    secret_key = secrets.token_urlsafe(50)
    provider_keys = f"{secrets.token_urlsafe(32)},{secrets.token_urlsafe(32)}"
    password = secrets.token_urlsafe(16)
    token = secrets.token_urlsafe(24)
    env = _clean_env(
        DJANGO_SECRET_KEY_FILE=_write(tmp_path / "secret_key", secret_key + "\n"),
        DATABASE_URL_FILE=_write(tmp_path / "database_url", f"postgres://gw:{password}@db.internal:5432/gateway\n"),
        REDIS_URL_FILE=_write(tmp_path / "redis_url", f"redis://:{password}@redis.internal:6379/0\r\n"),
        GATEWAY_PROVIDER_SECRET_KEY_FILE=_write(tmp_path / "provider_keys", provider_keys),
        GATEWAY_METRICS_TOKEN_FILE=_write(tmp_path / "metrics_token", token + "\n"),
    )
    result = _settings_of(env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown == {
        "SECRET_KEY": secret_key,
        "DB_NAME": "gateway",
        "DB_PASSWORD": password,
        "DB_HOST": "db.internal",
        "REDIS_URL": f"redis://:{password}@redis.internal:6379/0",
        # Derived from REDIS_URL, so the broker has the password too.
        "CELERY_BROKER_URL": f"redis://:{password}@redis.internal:6379/0",
        "PROVIDER_SECRET_KEY": provider_keys,
        "METRICS_TOKEN": token,
    }


def test_a_variable_and_its_file_together_are_refused(tmp_path):
    secret_key = secrets.token_urlsafe(50)
    env = _clean_env(
        DJANGO_SECRET_KEY=secret_key, DJANGO_SECRET_KEY_FILE=_write(tmp_path / "secret_key", secret_key + "x")
    )
    result = _settings_of(env)
    assert result.returncode != 0
    assert "set DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE, not both" in result.stderr
    assert secret_key not in result.stderr + result.stdout


def test_an_unreadable_secret_file_is_named_without_its_content(tmp_path):
    missing = tmp_path / "nowhere" / "database_url"
    env = _clean_env(DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DATABASE_URL_FILE=str(missing))
    result = _settings_of(env)
    assert result.returncode != 0
    assert f"DATABASE_URL_FILE: cannot read {missing}: No such file or directory" in result.stderr

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe-not-text")
    env = _clean_env(DJANGO_SECRET_KEY_FILE=str(binary))
    result = _settings_of(env)
    assert result.returncode != 0
    assert f"DJANGO_SECRET_KEY_FILE: cannot read {binary}: not UTF-8 text" in result.stderr
    assert "not-text" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_production_gateway_given_only_secret_files_serves(simulator_factory, redis_server, settings, tmp_path):
    provider_key = secrets.token_urlsafe(32)
    # The provider's upstream key is encrypted here under the key the gateway gets in a file only.
    settings.PROVIDER_SECRET_KEY = provider_key
    upstream = simulator_factory(api_key="sk-upstream-files")
    sim = provider_create("sim-files", upstream.openai_base, api_key="sk-upstream-files")
    model_create("sim-files", [(sim, "sim-echo?tokens=4", 0)])
    key = key_create("files")

    env = gateway_env(redis_server)
    for name in ("DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "GATEWAY_PROVIDER_SECRET_KEY"):
        env.pop(name, None)
    env.update(
        DJANGO_DEBUG="False",
        DJANGO_SECRET_KEY_FILE=_write(tmp_path / "secret_key", secrets.token_urlsafe(50) + "\n"),
        DATABASE_URL_FILE=_write(tmp_path / "database_url", database_url_for_subprocess() + "\n"),
        REDIS_URL_FILE=_write(tmp_path / "redis_url", redis_server + "\n"),
        GATEWAY_PROVIDER_SECRET_KEY_FILE=_write(tmp_path / "provider_key", provider_key + "\n"),
    )
    port = free_port()
    log_path = tmp_path / "gateway.log"
    command = [sys.executable, "manage.py", "run_gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", timeout=30, process=process)
        response = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "sim-files", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        # The simulator requires its key: an answer means the gateway decrypted it with the key from its file.
        assert response.json()["choices"][0]["message"]["content"]
        assert len(upstream.requests()) == 1
        # The key was found in the database of its file, the call's usage queued in the Redis of its file.
        request_id = response.headers["x-request-id"]
        wait_usage(lambda events: any(event["request_id"] == request_id for event in events), timeout=10)
    finally:
        stop_process(process)
    assert provider_key not in log_path.read_text(errors="replace")
