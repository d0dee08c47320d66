"""Production settings pass Django's deployment checks, and refuse to start without a secret key."""

import os
import secrets
import subprocess
import sys

from django.conf import settings

PRODUCTION_ENV = {
    "DJANGO_DEBUG": "False",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
    "DJANGO_ALLOWED_HOSTS": "gw.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://gw.example.com",
    "GATEWAY_PROVIDER_SECRET_KEY": secrets.token_urlsafe(32),
    "REDIS_URL": "redis://redis.internal:6379/0",
}


def manage(*args: str, env_overrides: dict, tmp_path) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "GATEWAY_", "DATABASE_", "REDIS_", "CELERY_"))
    }
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'check.sqlite3'}", **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_production_environment(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stderr


def test_check_deploy_flags_an_insecure_setup(tmp_path):
    """The check above can fail: a weak secret key and no HTTPS redirect are reported."""
    insecure = {**PRODUCTION_ENV, "DJANGO_SECRET_KEY": "short", "DJANGO_SECURE_SSL_REDIRECT": "False"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=insecure, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "security.W009" in result.stderr
    assert "security.W008" in result.stderr


def test_production_requires_a_secret_key(tmp_path):
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "DJANGO_SECRET_KEY"}
    result = manage("check", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
