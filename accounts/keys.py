"""API key format and hashing: `sk-gw-<random>`; only the SHA-256 hash and a display prefix are stored."""

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-gw-"
DISPLAY_PREFIX_LENGTH = 12


def key_generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def key_display_prefix(plaintext: str) -> str:
    return plaintext[:DISPLAY_PREFIX_LENGTH]


def key_matches(plaintext: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(plaintext), stored_hash)


def key_looks_valid(plaintext: str) -> bool:
    return plaintext.startswith(KEY_PREFIX) and 20 <= len(plaintext) <= 128
