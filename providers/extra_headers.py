"""The rules a provider's extra headers follow, checked where they are written (Provider.clean, so the
admin form, and the YAML import) and again before a request carries them (rows saved before the rules).

A name is an HTTP token (RFC 9110, formerly RFC 7230): a space or a colon in it would make the line
mean another header. A value is printable ASCII with inner spaces and tabs: a CR or LF would end the
header and start another of the writer's choosing, a NUL or another control character is refused by
HTTP servers. The headers that frame the request (Content-Length, Transfer-Encoding, Connection, ...)
are the HTTP client's to set, never a provider's configuration.
"""

import re
from functools import lru_cache

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?")
_LINE_BREAKS = re.compile(r"[\r\n\x00]")
FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
)
NAME_RULE = "an HTTP token: letters, digits and !#$%&'*+-.^_`|~, no spaces or colons"


def extra_header_problem(name, value) -> str | None:
    """What is wrong with one extra header, naming it; None when it may be sent."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        return f"extra header {name!r}: the name must be {NAME_RULE}"
    if name.lower() in FRAMING_HEADERS:
        return f"extra header {name!r}: {name} is set by the HTTP client, not by configuration"
    if not isinstance(value, str):
        return f"extra header {name!r}: the value must be a string, not {type(value).__name__}"
    if _LINE_BREAKS.search(value):
        return f"extra header {name!r}: the value must not contain a line break (CR, LF) or a NUL"
    if not _VALUE.fullmatch(value):
        return (
            f"extra header {name!r}: the value must be printable ASCII (spaces and tabs only inside it, "
            "no other control characters)"
        )
    return None


def extra_headers_problems(headers) -> list[str]:
    """Every problem of a provider's `extra_headers` (an object of header name -> value)."""
    if headers is None:
        return []
    if not isinstance(headers, dict):
        return [f"extra headers must be an object of header name to value, not {type(headers).__name__}"]
    problems = (extra_header_problem(name, value) for name, value in headers.items())
    return [problem for problem in problems if problem]


@lru_cache(maxsize=1024)
def extra_headers_problem(pairs: tuple[tuple[str, str], ...]) -> str | None:
    """The first problem of a route's extra headers ((name, value) pairs), remembered per distinct set: the
    check costs a request nothing after the first."""
    for name, value in pairs:
        problem = extra_header_problem(name, value)
        if problem:
            return problem
    return None
