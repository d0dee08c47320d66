"""Credentials out of what providers say: the one function every upstream message passes through before
it reaches a client or a log.

A provider's error may quote the request it got - its Authorization or x-api-key header, a key in a
URL - and the gateway relays provider errors to its clients. Redacted are: the secrets the caller names
(the provider's API key), wherever they appear and also the piece of one left at either side of where
a long message was shortened; the values of credential headers and query parameters; Bearer tokens; and
anything shaped like an API key (sk-..., gsk_..., xai-..., AIza..., AKIA..., ghp_..., xoxb-..., hf_..., JWTs).

The request log redacts more (log_text_redact): besides all of that, e-mail addresses, card-like numbers (a
Luhn-valid run of 13 to 19 digits) and the operator's own patterns (GATEWAY_LOG_REDACT_PATTERNS).
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
_KEY_SHAPED = re.compile(
    r"""(?x)
    \b(?:sk|gsk|xai|rk|pk)[-_][A-Za-z0-9_-]{8,}           # OpenAI, Anthropic, this gateway, Groq, xAI, Stripe
    | \bAIza[0-9A-Za-z_-]{20,}                            # Google
    | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b                       # AWS access key ids
    | \b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,})   # GitHub, GitLab
    | \bxox[abprs]-[A-Za-z0-9-]{10,}                      # Slack
    | \bhf_[A-Za-z0-9]{20,}                               # Hugging Face
    | \beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}   # JWTs
    """
)
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


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, possibly grouped by single spaces or dashes, not part of a longer number.
_CARD_LIKE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_redacted(match: re.Match) -> str:
    digits = re.sub(r"[ -]", "", match[0])
    return "[redacted card]" if _luhn_valid(digits) else match[0]


def log_text_redact(text: str, *, patterns=(), secrets=()) -> tuple[str, int]:
    """`text` as the request log may keep it, and how many things were replaced: every credential
    upstream_message_redact removes (and `secrets`), e-mail addresses, card-like numbers, and whatever the
    operator's `patterns` (compiled regular expressions) match."""
    count = 0

    def sub(pattern: re.Pattern, replacement, value: str) -> str:
        nonlocal count
        value, found = pattern.subn(replacement, value)
        count += found
        return value

    value = sub(_CREDENTIAL_HEADER, lambda m: m[1] + m[2] + REDACTED, text)
    value = sub(_BEARER, "Bearer " + REDACTED, value)
    value = sub(_KEY_SHAPED, REDACTED, value)
    value = sub(_CREDENTIAL_QUERY, lambda m: m[1] + REDACTED, value)
    for secret in secrets:
        if secret and len(secret) >= SECRET_MIN_LENGTH and secret in value:
            count += value.count(secret)
            value = value.replace(secret, REDACTED)
    value = sub(_EMAIL, "[redacted email]", value)
    before = value
    value = _CARD_LIKE.sub(_card_redacted, value)
    if value != before:
        count += value.count("[redacted card]") - before.count("[redacted card]")
    for pattern in patterns:
        value = sub(pattern, REDACTED, value)
    return value, count
