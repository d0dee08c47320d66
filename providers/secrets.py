"""Encryption at rest for provider secrets (Fernet, key from settings or derived from SECRET_KEY)."""

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(material: str) -> Fernet:
    digest = hashlib.sha256(("provider-secrets:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _current() -> Fernet:
    return _fernet(settings.PROVIDER_SECRET_KEY or settings.SECRET_KEY)


def secret_encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return _current().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken:
        # Never surface the ciphertext or key material; the provider is then called without a key.
        return ""
