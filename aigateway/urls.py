"""URL map: OpenAI/Anthropic-compatible API under /v1, management API under /api, admin, Prometheus metrics,
static files."""

import re
from urllib.parse import urlparse

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from accounts.dashboard import dashboard
from aigateway.metrics import metrics_view


def static_file(request, path: str):
    """Admin and playground assets, found by the staticfiles finders (with or without DEBUG). A path
    that leads out of the static folders (`..%2f..%2fetc%2fpasswd`) or holds a NUL byte is a 404."""
    try:
        return staticfiles_serve(request, path, insecure=True)
    except (SuspiciousFileOperation, ValueError):
        raise Http404("no such static file") from None


urlpatterns = [
    path("admin/dashboard/", dashboard, name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("accounts.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("streaming.urls")),
]

if not urlparse(settings.STATIC_URL).netloc:  # assets on another host (a CDN) are not ours to serve
    urlpatterns.insert(0, re_path(rf"^{re.escape(settings.STATIC_URL.strip('/'))}/(?P<path>.*)$", static_file))
