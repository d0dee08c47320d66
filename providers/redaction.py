"""Credentials out of what providers say: the one function every upstream message passes through before
it reaches a client or a log.

A provider's error may quote the request it got - its Authorization or x-api-key header, a key in a
URL - and the gateway relays provider errors to its clients. Redacted are: the secrets the caller names
(the provider's API key), wherever they appear and also the piece of one left at either side of where
a long message was shortened; the values of credential headers and query parameters; Bearer tokens; and
anything shaped like an API key (sk-..., gsk_..., xai-..., AIza...).
"""

import re

from aigateway.errors import ELLIPSIS

REDACTED = "[redacted]"
# A known secret shorter than this is not looked for verbatim: it would match ordinary words.
SECRET_MIN_LENGTH = 8
# The shortest piece of a known secret taken for one where a shortened message was cut.
FRAGMENT_MIN_LENGTH = 4

_CREDENTIAL_HEADER = re.compile(
    r"""(?ix)
    \b((?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key|cookie|set-cookie)   # the name
    (["']?\s*[:=]\s*["']?)                                   # `: `, `=`, or `": "` in quoted JSON
    (?:(?:bearer|basic|token)\s+)?                           # an auth scheme
    [^\s"'\\,;}]+                                          # the value (never past a quote or an escape)
    """
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_KEY_SHAPED = re.compile(r"\b(?:sk|gsk|xai)[-_][A-Za-z0-9_-]{8,}|\bAIza[0-9A-Za-z_-]{20,}")
_CREDENTIAL_QUERY = re.compile(r"(?i)([?&](?:key|api[_-]?key|access_token|token)=)[^&\s\"'\\]+")


def upstream_message_redact(message: str, *, secrets=()) -> str:
    """`message` (text a provider sent) with every credential in it replaced by [redacted]; `secrets`:
    values known to be secret (the provider's API key), redacted wherever they appear."""
    text = _CREDENTIAL_HEADER.sub(lambda m: m[1] + m[2] + REDACTED, message)
    text = _BEARER.sub("Bearer " + REDACTED, text)
    text = _KEY_SHAPED.sub(REDACTED, text)
    text = _CREDENTIAL_QUERY.sub(lambda m: m[1] + REDACTED, text)
    for secret in secrets:
        if secret and len(secret) >= SECRET_MIN_LENGTH:
            text = text.replace(secret, REDACTED)
            if ELLIPSIS in text:
                text = _fragments_redacted(text, secret)
    return text


def _fragments_redacted(text: str, secret: str) -> str:
    """A message shortened for the client (aigateway.errors.message_cap) may have been cut inside a
    secret: the start of it before the ellipsis, or the end of it after, is redacted too."""
    pieces = text.split(ELLIPSIS)
    for index in range(len(pieces)):
        if index > 0:
            pieces[index] = _head_redacted(pieces[index], secret)
        if index < len(pieces) - 1:
            pieces[index] = _tail_redacted(pieces[index], secret)
    return ELLIPSIS.join(pieces)


def _tail_redacted(piece: str, secret: str) -> str:
    for size in range(len(secret) - 1, FRAGMENT_MIN_LENGTH - 1, -1):
        if piece.endswith(secret[:size]):
            return piece[:-size] + REDACTED
    return piece


def _head_redacted(piece: str, secret: str) -> str:
    for size in range(len(secret) - 1, FRAGMENT_MIN_LENGTH - 1, -1):
        if piece.startswith(secret[-size:]):
            return REDACTED + piece[size:]
    return piece
