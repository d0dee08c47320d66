"""ASGI entry point.

The API paths (/v1/..., /health, /ready, /metrics) go to `aigateway.api_handler.ApiHandler`: the API
views on a lean request, with no middleware (Django's MiddlewareMixin runs process_request and
process_response in a worker thread on every request, and nothing the API needs comes from middleware:
keys are checked by the views). Everything else - admin, management API, playground, static files - runs
Django's handler with the full middleware stack. Websockets go to Channels.
"""

import gc
import os
from urllib.parse import quote_from_bytes

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aigateway.settings")

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from aigateway.api_handler import ApiHandler  # noqa: E402
from aigateway.cors import ApiCors  # noqa: E402
from aigateway.lifespan import lifespan_app  # noqa: E402
from aigateway.security_headers import ApiTransportSecurity, SecurityHeaders  # noqa: E402
from aigateway.tracing import tracing_setup  # noqa: E402
from streaming.consumers import scope_headers, socket_key  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402
from streaming.views import api_path_unprefixed  # noqa: E402

API_PATH_PREFIX = "/v1/"
# Probes and metrics: plain answers for machines, no session or CSRF, no middleware.
API_PATHS = frozenset({"/health", "/ready", "/metrics"})


class OriginCheckUnlessKey:
    """Browsers send their cookies with a websocket opened by any site, so a session-authenticated
    socket must come from one of our own hosts (AllowedHostsOriginValidator). A socket presenting an API
    key (`Authorization: Bearer` or `x-api-key`, which a page cannot set on a websocket) comes from a
    program and needs no Origin: the consumer authenticates it by that key alone, never by the session,
    and closes it with 4401 unless the key is valid. Any other Authorization scheme (a browser sends
    `Basic` for `ws://user:pass@host/`) is no key, so the Origin check holds.

    A socket with neither a key nor an Origin header is a program too: every browser sends Origin on a
    websocket handshake (RFC 6455, section 4.1), whichever page opens it. It reaches the consumer without
    its cookies, so it can never be authenticated by a session, and is told to send a key (an error frame,
    close 4401) instead of getting a bare 403 it cannot read."""

    def __init__(self, app) -> None:
        self.app = app
        self.origin_checked = AllowedHostsOriginValidator(app)

    async def __call__(self, scope, receive, send):
        headers = scope_headers(scope)
        if socket_key(headers) is not None:
            return await self.app(scope, receive, send)
        if "origin" not in headers:
            kept = [(name, value) for name, value in scope.get("headers", ()) if name.lower() != b"cookie"]
            return await self.app({**scope, "headers": kept}, receive, send)
        return await self.origin_checked(scope, receive, send)


class HttpDispatch:
    def __init__(self, api_app, site_app) -> None:
        self.api_app = api_app
        self.site_app = site_app

    async def __call__(self, scope, receive, send):
        query = scope.get("query_string", b"")
        if query and not query.isascii():
            # Raw non-ASCII bytes (some servers pass them on): Django would answer an HTML 400 with a
            # logged traceback; percent-encoded, they reach the views as the bad values they are.
            scope = {**scope, "query_string": quote_from_bytes(query, safe=_ASCII).encode()}
        path = scope["path"]
        # An API path without its /v1 (a wrong base URL) gets the API's JSON 404 saying so, never a page.
        api = path.startswith(API_PATH_PREFIX) or path in API_PATHS or api_path_unprefixed(path)
        app = self.api_app if api else self.site_app
        return await app(scope, receive, send)


_ASCII = bytes(range(0x80))


application = ProtocolTypeRouter(
    {
        # Static files (admin and playground assets) are served under STATIC_URL by the site's URL map.
        # ApiHandler adds the security header to its responses itself.
        "http": HttpDispatch(ApiTransportSecurity(ApiCors(ApiHandler())), SecurityHeaders(django_asgi_app)),
        "lifespan": lifespan_app,
        "websocket": OriginCheckUnlessKey(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# OpenTelemetry traces when the OTEL_* environment asks for them (aigateway.tracing); off by default.
tracing_setup()

# What exists now (Django, the apps, their modules) lives as long as the process. Frozen, the collector's
# full passes stop walking it again and again: measured, about a third more non-streamed requests per second.
gc.collect()
gc.freeze()
