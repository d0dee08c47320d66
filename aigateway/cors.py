"""CORS for the API paths, so a web app can call the gateway from a browser with a key of its own.

Off unless GATEWAY_CORS_ORIGINS lists origins. Preflights are answered here, before Django; other
responses to an allowed origin get the CORS headers added to their start message, so streamed bodies
pass through untouched.
"""

from django.conf import settings

from aigateway.security_headers import NOSNIFF

# Headers a browser script may read: request ids and the limits, as the SDKs expose them.
EXPOSED = b"x-request-id, request-id, retry-after, x-gateway-provider, x-gateway-run-id, " + b", ".join(
    f"x-ratelimit-{kind}-{unit}".encode() for kind in ("limit", "remaining", "reset") for unit in ("requests", "tokens")
)
MAX_AGE = b"600"


class ApiCors:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        allowed = settings.GATEWAY_CORS_ORIGINS
        if not allowed:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None or origin.decode("latin-1") not in allowed:
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await self._preflight(origin, headers, send)
            return None

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", ()),
                        (b"access-control-allow-origin", origin),
                        (b"access-control-expose-headers", EXPOSED),
                        (b"vary", b"Origin"),
                    ],
                }
            await send(message)

        return await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _preflight(origin: bytes, headers: dict, send) -> None:
        response_headers = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
            NOSNIFF,
        ]
        requested = headers.get(b"access-control-request-headers")
        if requested:
            # The SDKs send many headers of their own (x-stainless-*, anthropic-*): whatever they ask for.
            response_headers.append((b"access-control-allow-headers", requested))
        await send({"type": "http.response.start", "status": 204, "headers": response_headers})
        await send({"type": "http.response.body", "body": b""})
