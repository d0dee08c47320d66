"""The one domain error of the gateway; each client dialect renders it in its own error shape."""


class GatewayError(Exception):
    """A failure the client should see: HTTP status, stable code, message naming the problem."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.param = param


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, code, message, param=param)
