"""A `rediss://` REDIS_URL is verified by every Redis user of the gateway: its own clients, the Channels layer and
Celery's broker (kombu alone accepts any certificate unless the URL says `ssl_cert_reqs`). A Redis that speaks
only TLS with a certificate of a CA made for the test is refused while that CA is not trusted, and reached once
the URL's `ssl_ca_certs` names it, or SSL_CERT_FILE does. Each case runs in a fresh process (settings come
from the environment)."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.pki import CertificateAuthority
from tests.support.sentinel import debian_redis, redis_node

PROBE = r"""
import asyncio, json, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aigateway.settings")
import django
django.setup()

def outcome(call):
    try:
        call()
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"

def gateway():
    from aigateway.redis import redis_sync
    redis_sync().set("tls-probe", 1)

def channels():
    from channels.layers import get_channel_layer
    async def send():
        layer = get_channel_layer()
        await layer.send("tls-probe", {"type": "probe"})
        assert (await layer.receive("tls-probe"))["type"] == "probe"
    asyncio.run(send())

def celery():
    from aigateway.celery import app
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0)
        connection.default_channel.client.ping()

print(json.dumps({"gateway": outcome(gateway), "channels": outcome(channels), "celery": outcome(celery)}))
"""


def _probe(redis_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDIS_", "CELERY_", "SSL_CERT"))}
    env.update({"DJANGO_SETTINGS_MODULE": "aigateway.settings", "REDIS_URL": redis_url, **extra})
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def tls_redis(tmp_path):
    server, _ = debian_redis()
    authority = CertificateAuthority("redis test CA")
    issued = authority.server()
    cert, key, ca = tmp_path / "redis.pem", tmp_path / "redis.key", tmp_path / "ca.pem"
    cert.write_text(issued.cert_pem)
    key.write_text(issued.key_pem)
    key.chmod(0o600)
    ca.write_text(authority.cert_pem)
    node = redis_node(server, tmp_path / "redis", tls=(cert, key, ca))
    yield node, ca
    node.stop()


def test_rediss_is_verified_by_the_gateway_channels_and_celery(tls_redis):
    node, ca = tls_redis
    url = f"rediss://127.0.0.1:{node.port}/0"

    untrusted = _probe(url)
    for user, outcome in untrusted.items():
        assert "certificate verify failed" in outcome, (user, outcome)

    assert _probe(f"{url}?ssl_ca_certs={ca}") == {"gateway": "ok", "channels": "ok", "celery": "ok"}
    assert _probe(url, SSL_CERT_FILE=str(ca)) == {"gateway": "ok", "channels": "ok", "celery": "ok"}
    assert node.client().get("tls-probe") == b"1"
