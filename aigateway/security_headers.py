"""Security headers Django's middleware does not add, because the response never passes through it.

- `X-Content-Type-Options: nosniff` on every HTTP response, the API paths and static files included.
  Static files skip Django's middleware, so `SecurityHeaders` adds it to the response's start message: a
  streamed body passes through untouched. The API paths get it from their own handler
  (aigateway.api_handler).
- `Strict-Transport-Security` on the API paths' answers to requests that came over HTTPS, when not DEBUG
  (`ApiTransportSecurity`), with the same settings (SECURE_HSTS_*) Django's SecurityMiddleware applies to
  the site's pages. Never over plain HTTP: a browser ignores it there (RFC 6797, section 7.2).

Site pages get the rest of their headers from the middleware in settings ("Security"); a header
already present is left alone.
"""

from django.conf import settings

NOSNIFF = (b"x-content-type-options", b"nosniff")
HEADERS = (NOSNIFF,)
HSTS_NAME = b"strict-transport-security"


class SecurityHeaders:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                missing = [header for header in HEADERS if header[0] not in present]
                if missing:
                    message = {**message, "headers": [*message.get("headers", ()), *missing]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def hsts_value() -> bytes | None:
    """The Strict-Transport-Security value the settings ask for; None under DEBUG or with HSTS off."""
    seconds = getattr(settings, "SECURE_HSTS_SECONDS", 0)
    if settings.DEBUG or not seconds:
        return None
    value = f"max-age={seconds}"
    if getattr(settings, "SECURE_HSTS_INCLUDE_SUBDOMAINS", False):
        value += "; includeSubDomains"
    if getattr(settings, "SECURE_HSTS_PRELOAD", False):
        value += "; preload"
    return value.encode("ascii")


def request_is_secure(scope) -> bool:
    """Whether the request came over HTTPS: to this server, or to the proxy in front of it as
    SECURE_PROXY_SSL_HEADER says (Django's rule for `request.is_secure()`)."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy:
        return False
    meta_name, secure_value = proxy
    wanted = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1")
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            return value.decode("latin-1").split(",", 1)[0].strip() == secure_value
    return False


class ApiTransportSecurity:
    """ASGI wrapper of the API paths: adds Strict-Transport-Security to the start of an answer to an HTTPS
    request (see the module docstring). Other requests, and every body message, pass through untouched."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        value = hsts_value() if scope["type"] == "http" else None
        if value is None or not request_is_secure(scope):
            return await self.app(scope, receive, send)
        header = (HSTS_NAME, value)

        async def send_with_hsts(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if not any(name.lower() == HSTS_NAME for name, _ in headers):
                    message = {**message, "headers": [*headers, header]}
            await send(message)

        return await self.app(scope, receive, send_with_hsts)
