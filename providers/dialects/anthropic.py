"""Anthropic Messages wire format."""

import orjson

from aigateway.errors import GatewayError
from providers.dialects import register
from providers.dialects.base import Dialect
from streaming.sse import sse_encode

ANTHROPIC_VERSION = "2023-06-01"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicDialect(Dialect):
    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        headers.update(extra_headers)
        return headers

    def error_body(self, error: GatewayError) -> dict:
        error_type = _ERROR_TYPES.get(error.status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": error.message}}

    def stream_error_event(self, error: GatewayError) -> bytes:
        return sse_encode(orjson.dumps(self.error_body(error)), event="error")


anthropic = register(AnthropicDialect(name="anthropic", paths={"messages": "/v1/messages", "models": "/v1/models"}))
