"""The one domain error of the gateway; each client dialect renders it in its own error shape."""

import re

# A client may send a megabyte-long model name, tool name or path; an error quotes at most this much
# of any one value, and the whole message stays short, so an error never echoes a request back.
QUOTED_VALUE_MAX = 200
MESSAGE_MAX = 1000
ELLIPSIS = "…"
_LONG_QUOTED = re.compile(r"(['\"])([^'\"]{" + str(QUOTED_VALUE_MAX + 1) + r",})\1")


def message_cap(message: str) -> str:
    """`message` with every quoted value longer than QUOTED_VALUE_MAX cut to that length (marked with an
    ellipsis), then the whole cut to MESSAGE_MAX characters, keeping its start and its end."""
    if len(message) <= QUOTED_VALUE_MAX:
        return message
    message = _LONG_QUOTED.sub(lambda m: m[1] + m[2][:QUOTED_VALUE_MAX] + ELLIPSIS + m[1], message)
    if len(message) > MESSAGE_MAX:
        half = (MESSAGE_MAX - len(ELLIPSIS)) // 2
        message = message[:half] + ELLIPSIS + message[-half:]
    return message


class GatewayError(Exception):
    """A failure the client should see: HTTP status, stable code, message naming the problem."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        error_type: str | None = None,
    ) -> None:
        message = message_cap(message)
        super().__init__(message)
        self.status = status
        self.code = code
        # The OpenAI error type when the status alone does not say it (e.g. "insufficient_quota").
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}
        self.param = param if param is None else message_cap(param)


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, code, message, param=param)
