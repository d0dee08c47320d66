"""The plaintext of a key just issued in admin, handed from the POST that issued it to the one page that shows it
(redirect-after-POST), and to nothing else.

The issuing request stores the plaintext in Redis for a few minutes, encrypted under a random token that is
the last part of the page's URL. Opening the page takes the entry out (read and delete in one transaction):
the key is shown once and a reload finds nothing. Neither half reveals the key alone: Redis holds ciphertext
whose key exists only in the URL, and the URL's token is worthless once the page was opened or the entry
expired. Nothing goes into the session, a message or a log.
"""

import base64
import hashlib
import secrets

import orjson
from cryptography.fernet import Fernet, InvalidToken

from aigateway.redis import redis_sync

HANDOFF_KEY_PREFIX = "gw:key-handoff:"
# Long enough for a slow browser to follow the redirect; short enough that an unopened page leaves little behind.
HANDOFF_TTL_SECONDS = 300


def _redis_key(token: str) -> str:
    return HANDOFF_KEY_PREFIX + hashlib.sha256(b"key-handoff-id:" + token.encode()).hexdigest()


def _fernet(token: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"key-handoff-key:" + token.encode()).digest()))


def key_handoff_put(*, user_id: int, api_key_id: int, plaintext: str) -> str:
    """Keep a new key's plaintext for its one page; returns the token that opens it."""
    token = secrets.token_urlsafe(32)
    sealed = _fernet(token).encrypt(orjson.dumps({"user_id": user_id, "api_key_id": api_key_id, "key": plaintext}))
    redis_sync().set(_redis_key(token), sealed, ex=HANDOFF_TTL_SECONDS)
    return token


def key_handoff_take(*, user_id: int, api_key_id: int, token: str) -> str | None:
    """The plaintext kept under `token` for this user and key, removed as it is read; None when it was
    already shown, has expired, or belongs to someone else."""
    pipe = redis_sync().pipeline(transaction=True)
    pipe.get(_redis_key(token))
    pipe.delete(_redis_key(token))
    sealed, _deleted = pipe.execute()
    if sealed is None:
        return None
    try:
        entry = orjson.loads(_fernet(token).decrypt(sealed))
    except (InvalidToken, orjson.JSONDecodeError):
        return None
    if entry.get("user_id") != user_id or entry.get("api_key_id") != api_key_id:
        return None
    return entry.get("key")
