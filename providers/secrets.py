"""Encryption at rest for provider secrets (Fernet).

GATEWAY_PROVIDER_SECRET_KEY holds one key, or a comma-separated list during a rotation: the first
key encrypts, every key decrypts. `manage.py rotate_provider_secrets` re-encrypts every stored
secret under the first key, after which the older keys can be dropped. Unset, the key is derived
from DJANGO_SECRET_KEY. Each key is any string; the Fernet key is derived from it.
"""

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUndecryptable(ValueError):
    """A stored secret that none of the configured keys decrypts."""


def _fernet_for(material: str) -> Fernet:
    digest = hashlib.sha256(("provider-secrets:" + material).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


@lru_cache(maxsize=8)
def _multi_fernet(materials: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([_fernet_for(material) for material in materials])


def secret_key_materials() -> tuple[str, ...]:
    """The configured keys, newest first."""
    configured = tuple(part.strip() for part in (settings.PROVIDER_SECRET_KEY or "").split(",") if part.strip())
    return configured or (settings.SECRET_KEY,)


def _current() -> MultiFernet:
    return _multi_fernet(secret_key_materials())


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


def secret_reencrypt(token: str) -> str:
    """The same secret encrypted under the first configured key; raises SecretUndecryptable."""
    if not token:
        return ""
    try:
        return _current().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUndecryptable("the stored secret does not decrypt with any configured key") from None
