"""Checks of a provider's egress settings, where they are written (admin, the YAML import): its forward proxy
and its TLS material. A bad value is refused there, naming the problem, never at request time."""

import ssl
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

PROXY_SCHEMES = ("http", "https")


def proxy_url_problem(url: str) -> str | None:
    """Why `url` cannot be a forward proxy (http://[user:password@]host:port), or None. Never quotes the URL:
    it may carry credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL (expected http://[user:password@]host:port)"
    if parts.scheme not in PROXY_SCHEMES:
        return f"must start with {' or '.join(s + '://' for s in PROXY_SCHEMES)}"
    if not parts.hostname:
        return "names no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be only scheme, host and port (no path, query or fragment)"
    if port == 0:
        return "has port 0"
    return None


def ca_bundle_problem(pem: str) -> str | None:
    """Why `pem` is not a usable bundle of CA certificates, or None."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        return f"cannot be loaded as CA certificates ({type(exc).__name__})"
    return None


def client_certificate_problem(cert: str, key: str) -> str | None:
    """Why a client certificate and its private key cannot be used together for mTLS, or None. Never quotes
    the key."""
    if bool(cert) != bool(key):
        return "a client certificate needs its private key, and a private key its certificate"
    if not cert:
        return None
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_text(cert)
        key_path.touch(mode=0o600)
        key_path.write_text(key)
        try:
            ssl.create_default_context().load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError, OSError) as exc:
            return f"the client certificate and key do not load together ({type(exc).__name__})"
    return None
