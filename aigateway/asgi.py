"""ASGI entry point.

The API paths (/v1/..., /health) go to a Django handler with no middleware: Django's
MiddlewareMixin runs process_request/process_response in a worker thread on every request, and
nothing the API needs comes from middleware (keys are checked by the views). Everything else -
admin, management API, playground - runs the full middleware stack. Websockets go to Channels.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aigateway.settings")

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402

from aigateway.lifespan import lifespan_app  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402

API_PATH_PREFIXES = ("/v1/", "/health")


class ApiHandler(ASGIHandler):
    """Django's ASGI handler with an empty middleware chain.

    It also skips the per-request ThreadSensitiveContext: that gives every request its own
    executor, so the two small sync hops Django still makes (request signals, response close)
    would start a new thread per request. They share asgiref's one sync thread instead.
    """

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)


class HttpDispatch:
    def __init__(self, api_app, site_app) -> None:
        self.api_app = api_app
        self.site_app = site_app

    async def __call__(self, scope, receive, send):
        app = self.api_app if scope["path"].startswith(API_PATH_PREFIXES) else self.site_app
        return await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        # Static files (admin assets) are served under STATIC_URL by the site handler.
        "http": HttpDispatch(ApiHandler(), ASGIStaticFilesHandler(django_asgi_app)),
        "lifespan": lifespan_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
